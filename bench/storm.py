#!/usr/bin/env python3
"""Reconnect storms: thousands of clients connecting at once, through wsbalancer (and HAProxy).

    .venv/bin/python bench/storm.py --admission            # 3,000 clients, admission.rate 500
    .venv/bin/python bench/storm.py --admission --rate 100 # the same where the rate binds
    .venv/bin/python bench/storm.py --reconnect            # 10,000 clients: workers=auto vs HAProxy
    .venv/bin/python bench/storm.py --reconnect --quick    # 2,000 clients, for trying it
    .venv/bin/python bench/storm.py --reconnect --repeat 3 --json out.json

--admission (issue 19, "Storm"): three echo backends behind one balancer with
`admission.rate` per backend; every client connects at the same instant. From the backends'
side: the upgrades each saw in any one second (the most over 1-s sliding windows, from the
arrival time of each upgrade request), which must stay within rate + burst. From the clients'
side: how many ended connected, how many got 503 with a Retry-After header, and how many
anything else (an error, another status, no answer at all), which must be none.

--reconnect (issue 18, item 4): as many clients as the file-descriptor limit allows up to
10,000 (2,000 with --quick), all connecting at once, through wsbalancer with `workers: auto`
and through HAProxy with as many threads (`nbthread`), both up for the whole run and taking
turns round by round: the time until every client is open, handshake failures, each proxy's
CPU (summed over its processes, from /proc), and the ratio of the two times.

The pieces are bench/run.py's: the child-process keeper, the Node.js echo backends
(bench/echo_server.js, which also lists when each upgrade arrived), the proxies, and the
Node.js load client (bench/load_client.js, scenario `storm`), here split over several
processes so that it is not the bottleneck. It prints figures and PASS/FAIL lines; the exit
status is 1 when a criterion of --admission failed, 0 otherwise (--reconnect's ratio is a
target it reports, not a check).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as harness  # noqa: E402  (bench/run.py: processes, backends, proxies, helpers)

CHILDREN = harness.CHILDREN
CLIENT_TIMEOUT = 60.0  # seconds a client waits for its answer before it counts as "none"


# ------------------------------------------------------------------------ measuring


def family_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and its child processes (wsbalancer's workers), seconds."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                pids.append(int(entry))
    ticks = 0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return v[3] + v[4], sum(v)


def sliding_max(times_ms: list[float], window_ms: float = 1000.0) -> int:
    """The most events in any half-open window [t, t + window) of the sorted `times_ms`."""
    best = lo = 0
    for hi, t in enumerate(times_ms):
        while times_ms[lo] <= t - window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def upgrades_seen(backend: harness.Backend, since_ms: float) -> list[float]:
    """When each upgrade request reached `backend` from `since_ms` on (ms since the epoch)."""
    url = f"http://127.0.0.1:{backend.port}/upgrades?since={since_ms:.3f}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return sorted(float(t) for t in json.load(response)["times"])


def backend_open(backends: list[harness.Backend]) -> list[int]:
    """Each backend's own count of open sessions."""
    out = []
    for b in backends:
        with urllib.request.urlopen(b.metric_url, timeout=5) as response:
            out.append(int(json.load(response)["agentsConnections"]))
    return out


def handshake_outcomes(admin_port: int) -> dict[str, float]:
    """wsbalancer_handshakes_total by outcome, from the balancer's /metrics."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("wsbalancer_handshakes_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal whole numbers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def storm(
    url: str,
    proxy_pid: int | None,
    backends: list[harness.Backend],
    count: int,
    client_procs: int,
    inflight: int,
) -> dict[str, Any]:
    """`count` clients connect to `url` at one instant from `client_procs` load-client
    processes; their answers merged, with the proxy's CPU and the backends' upgrades."""
    start_at = (time.time() + 1.5) * 1000  # each node process is up well before it
    procs = []
    for share in split(count, client_procs):
        spec = {
            "scenario": "storm",
            "urls": [url],
            "count": share,
            "inflight": max(1, inflight // client_procs) if inflight else 0,
            "start_at": start_at,
            "timeout": CLIENT_TIMEOUT,
            "deadline": CLIENT_TIMEOUT + 60,
        }
        procs.append(
            CHILDREN.start(
                ["node", str(BENCH / "load_client.js"), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
    drops = harness.listen_drops()
    time.sleep(max(0.0, start_at / 1000 - time.time() - 0.05))
    cpu0 = family_cpu_s(proxy_pid) if proxy_pid else 0.0
    idle0, total0 = machine_ticks()
    t0 = time.monotonic()
    outs = []
    for proc in procs:
        line = harness.read_line(proc, CLIENT_TIMEOUT + 30)
        outs.append(json.loads(line) if line.startswith("{") else {"ok": False, "error": line})
    wall = time.monotonic() - t0
    cpu1 = family_cpu_s(proxy_pid) if proxy_pid else 0.0
    idle1, total1 = machine_ticks()
    open_counts = backend_open(backends)
    upgrades = [upgrades_seen(b, start_at) for b in backends]
    for proc in procs:  # stdin ends: the clients close their sessions and exit
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        CHILDREN.stop(proc)
    harness.wait_backends_idle([b.metric_url for b in backends], 60)
    return merge(outs, count) | {
        "client_procs": client_procs,
        "proxy_cpu_s": cpu1 - cpu0 if proxy_pid else None,
        "machine_busy_pct": 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0)),
        "wall_s": wall,
        "listen_drops": harness.listen_drops() - drops,
        "backend_open": open_counts,
        "backend_upgrades": [len(u) for u in upgrades],
        "backend_peak_per_s": [sliding_max(u) if u else 0 for u in upgrades],
        # for the JSON: ms from the start of the storm, as each backend saw its upgrades
        "backend_upgrade_ms": [[round(t - start_at, 1) for t in u] for u in upgrades],
    }


def merge(outs: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """The answers of every load-client process as one storm's."""
    merged: dict[str, Any] = {
        "count": count,
        "opened": 0,
        "statuses": {},
        "errors": {},
        "unanswered": 0,
        "dropped_after_open": 0,
        "client_pct_core": [],
        "client_failures": [],
    }
    lasts, firsts, p50s, p99s, ra_min, ra_max = [], [], [], [], [], []
    for out in outs:
        if not out.get("ok"):
            merged["client_failures"].append(str(out.get("error"))[:300])
            continue
        merged["opened"] += out["opened"]
        merged["unanswered"] += out["unanswered"]
        merged["dropped_after_open"] += out["dropped_after_open"]
        for key in ("statuses", "errors"):
            for kind, n in out[key].items():
                merged[key][kind] = merged[key].get(kind, 0) + n
        merged["client_pct_core"].append(round(out["client_pct_core"]))
        if out["open_ms"]["last"] is not None:
            lasts.append(out["open_ms"]["last"])
            firsts.append(out["open_ms"]["first"])
            p50s.append(out["open_ms"]["p50"])
            p99s.append(out["open_ms"]["p99"])
        if out["retry_after"]["n"]:
            ra_min.append(out["retry_after"]["min"])
            ra_max.append(out["retry_after"]["max"])
    merged["unanswered"] += count - sum(o.get("count", 0) for o in outs if o.get("ok"))
    merged["first_open_s"] = min(firsts) / 1000 if firsts else None
    merged["last_open_s"] = max(lasts) / 1000 if lasts else None
    # the medians of the processes' own percentiles (each holds an equal share)
    merged["open_p50_s"] = statistics.median(p50s) / 1000 if p50s else None
    merged["open_p99_s"] = max(p99s) / 1000 if p99s else None
    merged["retry_after_range"] = (min(ra_min), max(ra_max)) if ra_min else None
    retry = sum(n for kind, n in merged["statuses"].items() if kind.endswith("retry-after"))
    merged["refused_retry_after"] = retry
    merged["other"] = count - merged["opened"] - retry
    merged["failures"] = merged["other"] + merged["dropped_after_open"]
    merged["all_open_s"] = merged["last_open_s"] if merged["opened"] == count else None
    return merged


# ------------------------------------------------------------------------ scenarios


def fmt(value: Any, digits: int = 0) -> str:
    return harness.fmt(value, digits)


def kinds(out: dict[str, Any]) -> str:
    """The answers that were neither an open session nor a 503 with Retry-After."""
    bits = [f"{k}: {n}" for k, n in out["statuses"].items() if not k.endswith("retry-after")]
    bits += [f"{k}: {n}" for k, n in out["errors"].items()]
    if out["unanswered"]:
        bits.append(f"no answer in {CLIENT_TIMEOUT:.0f} s: {out['unanswered']}")
    if out["dropped_after_open"]:
        bits.append(f"closed after opening: {out['dropped_after_open']}")
    bits += [f"load client failed: {e}" for e in out["client_failures"]]
    return "; ".join(bits) or "none"


def run_admission(args: argparse.Namespace, workdir: Path) -> bool:
    """Issue 19's storm: every client answered, no backend past rate + burst a second."""
    rate, burst = args.rate, args.burst or max(1, math.ceil(args.rate))
    backends = [harness.Backend(f"b{i + 1}") for i in range(3)]
    proxy = harness.WsBalancer(workdir)
    proxy.listen_extra = f":backlog={args.backlog}"
    proxy.settings = (
        f"workers={args.workers}",
        f"admission.rate={rate:g}",
        f"admission.burst={burst}",
        f"admission.queue={args.queue}",
        f"admission.max_wait={args.max_wait:g}s",
    )
    print(f"  starting wsbalancer ({', '.join(proxy.settings)}) ...", flush=True)
    proxy.start(backends)
    probe = harness.run_client({"scenario": "probe", "urls": [proxy.url], "timeout": 20}, 40)
    if not probe.get("all_ok"):
        raise RuntimeError(f"no echo through the balancer: {probe}")
    time.sleep(1.5)  # the probe's upgrade is a token: let every bucket fill up again
    before = handshake_outcomes(proxy.admin_port)
    print(
        f"  {args.clients:,} clients at once from {args.client_procs} process(es) ...", flush=True
    )
    out = storm(proxy.url, proxy.pid, backends, args.clients, args.client_procs, 0)
    after = handshake_outcomes(proxy.admin_port)
    proxy.stop()
    outcomes = {k: after.get(k, 0) - before.get(k, 0) for k in after}

    limit = rate + burst
    peaks = out["backend_peak_per_s"]
    ok_rate = all(p <= limit for p in peaks)
    ok_answer = out["other"] == 0 and out["dropped_after_open"] == 0
    print()
    print(f"## Storm with admission ({args.clients:,} clients at once, {time.strftime('%H:%M')})")
    print()
    print(
        f"wsbalancer: workers={args.workers}, admission.rate={rate:g}/s per backend, "
        f"burst {burst}, queue {args.queue}, max_wait {args.max_wait:g}s, listen backlog "
        f"{args.backlog}; 3 echo backends; load client: {args.client_procs} Node.js "
        f"process(es) ({', '.join(f'{p}%' for p in out['client_pct_core'])} of a core)."
    )
    print()
    print("| figure | value |")
    print("|---|---:|")
    print(f"| clients | {args.clients:,} |")
    print(f"| connected (101) | {out['opened']:,} |")
    ra = out["retry_after_range"]
    ra_text = f" (Retry-After {ra[0]}–{ra[1]} s)" if ra else ""
    print(f"| refused 503 with Retry-After | {out['refused_retry_after']:,}{ra_text} |")
    print(f"| anything else | {out['other'] + out['dropped_after_open']:,} |")
    print(f"| time to the last answer / s | {fmt(out['wall_s'], 2)} |")
    print(f"| time to the last open / s | {fmt(out['last_open_s'], 2)} |")
    for i, (n, peak) in enumerate(zip(out["backend_upgrades"], peaks, strict=True)):
        print(f"| backend b{i + 1}: upgrades / most in any 1 s | {n:,} / {peak:,} |")
    print(
        f"| balancer CPU / s ({fmt(out['proxy_cpu_s'], 1)} s over {out['wall_s']:.1f} s) |"
        f" {fmt(100 * out['proxy_cpu_s'] / out['wall_s'])}% of a core |"
    )
    print(f"| machine busy | {out['machine_busy_pct']:.0f}% of all cores |")
    print(f"| SYNs dropped by a full listen backlog | {out['listen_drops']} |")
    shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(outcomes.items()) if v)
    print(f"| balancer's handshake outcomes | {shown or 'n/a'} |")
    print()
    print(
        f"{'PASS' if ok_rate else 'FAIL'}: upgrades per backend in any 1 s ≤ rate + burst "
        f"= {limit:g} (most: {max(peaks)})"
    )
    print(
        f"{'PASS' if ok_answer else 'FAIL'}: every client answered, connected or 503 with "
        f"Retry-After (else: {kinds(out)})"
    )
    if args.workers != "1":
        print(
            "note: each of N worker processes has a 1/N share of the rate and burst; each "
            "paces only its own requests, and a backend counts them as they reach it"
        )
    if max(peaks) <= burst:
        print(
            f"note: each backend's upgrades fit in its burst ({burst}): no handshake waited "
            f"for a token, the admission rate was not what set the pace"
        )
    if args.json:
        doc = {"scenario": "admission", "args": vars(args), "storm": out, "outcomes": outcomes}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    return ok_rate and ok_answer


def run_reconnect(args: argparse.Namespace, workdir: Path) -> None:
    """Issue 18's storm: wsbalancer (workers: auto) and HAProxy (as many threads) in turns."""
    cores = len(os.sched_getaffinity(0))
    wanted = args.clients or (2000 if args.quick else 10000)
    nofile = CHILDREN.nofile[0]
    # A proxy holds two descriptors a session (client and backend side); HAProxy is one process.
    count = min(wanted, (nofile - 500) // 2)
    if count < wanted:
        print(
            f"  note: RLIMIT_NOFILE's hard limit is {nofile:,}, so {count:,} rather than "
            f"{wanted:,} clients (HAProxy holds two descriptors a session in one process)",
            flush=True,
        )
    backends = [harness.Backend(f"b{i + 1}") for i in range(2)]
    wsb = harness.WsBalancerWorkers(workdir)
    wsb.listen_extra = f":backlog={args.backlog}"
    hap = harness.HAProxy(workdir)
    hap.nbthread = cores
    hap.maxconn = count + 100  # HAProxy refuses to start if 2 × maxconn passes the fd limit
    hap.bind_extra = f" backlog {args.backlog}"
    paths: dict[str, harness.Proxy] = {"wsbalancer": wsb, "haproxy": hap}
    for name, proxy in paths.items():
        print(f"  starting {name} ...", flush=True)
        proxy.start(backends)
        probe = harness.run_client({"scenario": "probe", "urls": [proxy.url], "timeout": 20}, 40)
        if not probe.get("all_ok"):
            raise RuntimeError(f"{name}: no echo through it: {probe}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    ratios = []
    order = list(paths)
    for r in range(args.repeat):
        turn = order[r % 2 :] + order[: r % 2]
        for name in turn:
            proxy = paths[name]
            print(f"  round {r + 1}/{args.repeat} {name:<10} {count:,} clients ...", end="")
            out = storm(proxy.url, proxy.pid, backends, count, args.client_procs, args.inflight)
            runs[name].append(out)
            print(
                f" all open in {fmt(out['all_open_s'], 2)} s, failures {out['failures']}, "
                f"CPU {fmt(out['proxy_cpu_s'], 1)} s, clients "
                f"{'/'.join(str(p) for p in out['client_pct_core'])}% of a core",
                flush=True,
            )
        a, b = runs["wsbalancer"][-1]["all_open_s"], runs["haproxy"][-1]["all_open_s"]
        if a and b:
            ratios.append(a / b)
    for proxy in paths.values():
        proxy.stop()

    def median_run(name: str) -> dict[str, Any]:
        done = sorted(runs[name], key=lambda o: o["all_open_s"] or float("inf"))
        return done[(len(done) - 1) // 2]

    med = {name: median_run(name) for name in paths}
    print()
    print(
        f"## Reconnect storm ({count:,} clients{'' if args.inflight else ' at once'}, "
        f"{args.repeat} round(s), "
        f"{time.strftime('%H:%M')})"
    )
    print()
    print(
        f"wsbalancer: workers=auto ({cores} processes), message relay; HAProxy: nbthread "
        f"{cores}, mode http, balance leastconn; listen backlog {args.backlog} on both; 2 echo "
        f"backends; load client: {args.client_procs} Node.js processes "
        f"({'every connection at once' if not args.inflight else f'{args.inflight} in flight'})."
        " The median round of each is shown."
    )
    print()
    print("| figure | wsbalancer | HAProxy |")
    print("|---|---:|---:|")
    rows = [
        ("time until all are open / s", "all_open_s", 2),
        ("  half open after / s", "open_p50_s", 2),
        ("  first open after / s", "first_open_s", 3),
        ("opened", "opened", 0),
        ("handshake failures", "failures", 0),
        ("proxy CPU / s (all its processes)", "proxy_cpu_s", 2),
    ]
    for label, key, digits in rows:
        print(
            f"| {label} | {fmt(med['wsbalancer'][key], digits)} "
            f"| {fmt(med['haproxy'][key], digits)} |"
        )

    def per(name: str) -> str:
        o = med[name]
        return fmt(1000 * o["proxy_cpu_s"] / o["opened"], 3) if o["opened"] else "n/a"

    def pct(name: str) -> str:
        o = med[name]
        return f"{100 * o['proxy_cpu_s'] / o['wall_s']:.0f}%"

    print(f"| proxy CPU ms per session opened | {per('wsbalancer')} | {per('haproxy')} |")
    print(f"| proxy CPU, % of one core, over the storm | {pct('wsbalancer')} | {pct('haproxy')} |")
    cells = ["/".join(str(p) for p in med[n]["client_pct_core"]) for n in paths]
    print(f"| load-client processes, % of a core each | {cells[0]} | {cells[1]} |")
    print(
        f"| machine busy, % of all cores | {med['wsbalancer']['machine_busy_pct']:.0f} | "
        f"{med['haproxy']['machine_busy_pct']:.0f} |"
    )
    print(
        f"| SYNs dropped by a full listen backlog | {med['wsbalancer']['listen_drops']} | "
        f"{med['haproxy']['listen_drops']} |"
    )
    print(
        "| sessions per backend | "
        + " | ".join(" / ".join(str(c) for c in med[n]["backend_open"]) for n in paths)
        + " |"
    )
    print()
    if ratios:
        each = ", ".join(f"{x:.2f}" for x in ratios)
        ratio = statistics.median(ratios)
        verdict = "met" if ratio <= 2.5 else "not met"
        print(
            f"time until all open, wsbalancer ÷ HAProxy, same round: {ratio:.2f}× ({each}); "
            f"target ≤ 2.5×: {verdict}"
        )
    else:
        print("time until all open, wsbalancer ÷ HAProxy: n/a (a round did not open every client)")
    for name in paths:
        for i, o in enumerate(runs[name]):
            if o["failures"] or o["client_failures"]:
                print(f"problems, {name} round {i + 1}: {kinds(o)}")
    busiest = max(p for n in paths for o in runs[n] for p in o["client_pct_core"] or [0])
    if busiest >= 90:
        print(
            f"note: a load-client process reached {busiest}% of a core: it may have limited "
            "the pace (try --client-procs)"
        )
    if args.json:
        doc = {"scenario": "reconnect", "args": vars(args), "count": count, "runs": runs}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--admission", action="store_true", help="issue 19's storm (admission)")
    which.add_argument("--reconnect", action="store_true", help="issue 18's storm vs HAProxy")
    parser.add_argument(
        "--quick", action="store_true", help="fewer clients (admission 1,000; reconnect 2,000)"
    )
    parser.add_argument("--clients", type=int, help="clients (default 3,000 / 10,000)")
    parser.add_argument("--client-procs", type=int, help="load-client processes (default 1 / 2)")
    parser.add_argument(
        "--inflight",
        type=int,
        default=0,
        help="--reconnect: handshakes in flight at most (0: all at once)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="--reconnect: rounds")
    parser.add_argument("--rate", type=float, default=500.0, help="admission.rate per backend")
    parser.add_argument(
        "--burst", type=int, default=0, help="admission.burst (0: the default, one second's worth)"
    )
    parser.add_argument("--queue", type=int, default=1000, help="admission.queue")
    parser.add_argument("--max-wait", type=float, default=5.0, help="admission.max_wait, s")
    parser.add_argument("--workers", default="1", help="--admission: wsbalancer's workers")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog of the proxies")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    if args.admission and args.clients is None:
        args.clients = 1000 if args.quick else 3000
    if args.client_procs is None:
        args.client_procs = 1 if args.admission else 2
    if not 1 <= args.repeat <= 15 or not 1 <= args.client_procs <= 16:
        parser.error("--repeat 1-15, --client-procs 1-16")

    signal.signal(signal.SIGINT, harness._on_signal)
    signal.signal(signal.SIGTERM, harness._on_signal)
    nofile = harness.raise_nofile()
    harness.ensure_node_deps()
    busy = harness.machine_busy()
    info = harness.machine_info()
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu_model']}; RLIMIT_NOFILE {nofile[0]:,} "
        f"(hard {nofile[1]:,}); {busy:.0f}% busy before the run"
        + (" — other work is running: figures will be low and noisy" if busy >= 15 else ""),
        flush=True,
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="wsbalancer-storm-") as tmp:
            if args.admission:
                return 0 if run_admission(args, Path(tmp)) else 1
            run_reconnect(args, Path(tmp))
            return 0
    except KeyboardInterrupt:
        print("\nstorm: interrupted; stopping child processes", flush=True)
        return 130
    finally:
        CHILDREN.stop_all()


if __name__ == "__main__":
    sys.exit(main())
