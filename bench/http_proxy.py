"""Plain-HTTP proxying figures: GET latency over one keep-alive connection, direct to a demo
backend and through the balancer (`http.enabled`, cookie affinity on). Prints figures; it is
not a test and asserts nothing.

    .venv/bin/python bench/http_proxy.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import time

from wsbalancer.devtools.processes import (
    free_port,
    processes,
    rss_kib,
    spawn_balancer,
    spawn_demo_backend,
)


def measure(port: int, requests: int) -> dict[str, float]:
    """Sequential GETs of /metric on one keep-alive connection; latency in microseconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    cookie = ""
    samples = []
    started = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        connection.request("GET", "/metric", headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        response.read()
        samples.append((time.perf_counter() - t0) * 1e6)
        set_cookie = response.getheader("set-cookie")
        if set_cookie:
            cookie = set_cookie.split(";", 1)[0]
    elapsed = time.perf_counter() - started
    connection.close()
    samples.sort()
    return {
        "req_per_s": requests / elapsed,
        "p50_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    backend, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        spawn_demo_backend(children, backend)
        balancer = spawn_balancer(
            children,
            port,
            admin,
            [f"ws://127.0.0.1:{backend}"],
            [
                "http.enabled=true",
                "affinity.mode=cookie",
                "affinity.secret=bench",
                "log.level=warn",
            ],
        )
        measure(backend, 200)  # warm both paths up
        measure(port, 200)
        rows = {
            "direct": measure(backend, args.requests),
            "wsbalancer": measure(port, args.requests),
        }
        rss = rss_kib(balancer.pid) / 1024
    print(f"{'path':<12}{'req/s':>10}{'p50 µs':>10}{'p99 µs':>10}")
    for name, row in rows.items():
        print(f"{name:<12}{row['req_per_s']:>10.0f}{row['p50_us']:>10.0f}{row['p99_us']:>10.0f}")
    print(f"balancer RSS after the run: {rss:.1f} MiB")


if __name__ == "__main__":
    main()
