import json
from twisted.internet.testing import MemoryReactorClock
from treq.testing import StubTreq
from wsbalancer.config import load
from wsbalancer.balancer import Balancer
from wsbalancer.admin import admin_site
from wsbalancer.pool import PodInfo

def test_x():
    cfg = load(None, environ={}, backends=["a=ws://a:1", "b=wss://b:2"])
    r = MemoryReactorClock()
    r.advance(1_700_000_000)
    bal = Balancer(cfg, reactor=r)
    site = admin_site(bal)
    stub = StubTreq(site.resource)
    b = bal.pool.backends["a"]
    bal.pool.poll_succeeded(b, bal.pool.poll_started(b), PodInfo(7, "pod-a", "10.0.0.1", "node1"))
    d = stub.get("http://admin/balancer-metrics")
    stub.flush()
    resp = d.result
    print(resp.code, resp.headers)
    body = stub.content(resp); stub.flush()
    print(body.result.decode())
    d = stub.get("http://admin/readyz"); stub.flush(); print(d.result.code)
    d = stub.get("http://admin/metrics"); stub.flush(); print(d)
