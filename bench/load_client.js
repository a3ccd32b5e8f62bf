#!/usr/bin/env node
// The load client of bench/run.py (Node.js + ws): one scenario per run, one JSON line out.
//
//   node load_client.js '<json spec>'
//
// The spec names the scenario and its parameters, the target ws:// URLs (connections are
// spread round-robin over them) and the PIDs to watch. CPU figures are read from /proc here,
// at the exact edges of the measured window, so the orchestrator does not have to guess:
// utime+stime of each watched PID, this process's own CPU (process.cpuUsage) and the
// machine's busy share from /proc/stat. Every loop is bounded by the spec's duration/count
// and by a hard deadline after which the client gives up and exits.
//
// Scenarios:
//   probe     connect + one echo on every URL, retried until it works or times out
//   echo      `conns` connections, each keeping `inflight` messages of `size` bytes in
//             flight; echoes/s, bytes/s, round-trip latency percentiles
//   sessions  `concurrency` workers, each looping connect -> one echo -> close; sessions/s
//   idle      open `count` idle sessions, read the proxy's VmRSS before/after, close them
//   storm     at `start_at` (ms since the epoch) open `count` connections at once (or
//             `inflight` at a time), classify each answer (open, a status with or without
//             Retry-After, an error, none), print the line once all are answered, hold the
//             open ones until stdin ends, then close them (bench/storm.py)
'use strict';

const fs = require('fs');
const http = require('http');
const WebSocket = require('ws');

const spec = JSON.parse(process.argv[2] || '{}');
const CLK_TCK = spec.clk_tck || 100;
const urls = spec.urls || [];

const deadline = setTimeout(() => {
  emit({ ok: false, error: `hard deadline of ${spec.deadline}s reached` });
  process.exit(3);
}, (spec.deadline || 120) * 1000);

let emitted = false;
function emit(obj) {
  if (emitted) return;
  emitted = true;
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function finish(obj) {
  clearTimeout(deadline);
  emit(Object.assign({ ok: true }, obj));
  // Let stdout flush, then leave without waiting for sockets still closing.
  setImmediate(() => process.exit(0));
}

process.on('uncaughtException', (e) => {
  emit({ ok: false, error: `uncaught: ${e && e.stack ? e.stack : e}` });
  process.exit(4);
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

// ---------------------------------------------------------------- /proc sampling

// A watched process and its child processes (wsbalancer's worker processes): their
// figures are added up, so a proxy that forks is measured whole.
function family(pid) {
  const pids = [pid];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry) || Number(entry) === pid) continue;
    try {
      const s = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (Number(f[1]) === pid) pids.push(Number(entry)); // its parent is the proxy
    } catch (e) {
      // ended meanwhile
    }
  }
  return pids;
}

function oneProcTicks(pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // fields after "pid (comm) ": state=0 ... utime=11, stime=12
  return { user: Number(f[11]), sys: Number(f[12]) };
}

function procTicks(pid) {
  try {
    return family(pid).reduce(
      (sum, p) => {
        const t = oneProcTicks(p);
        return { user: sum.user + t.user, sys: sum.sys + t.sys };
      },
      { user: 0, sys: 0 },
    );
  } catch (e) {
    return null;
  }
}

function oneRssKiB(pid) {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(s);
  return m ? Number(m[1]) : 0;
}

function procRssKiB(pid) {
  try {
    return family(pid).reduce((sum, p) => sum + oneRssKiB(p), 0);
  } catch (e) {
    return null;
  }
}

function machineTicks() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = v[3] + (v[4] || 0);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  return { idle, total };
}

function sample() {
  const procs = {};
  for (const [name, pid] of Object.entries(spec.pids || {})) procs[name] = procTicks(pid);
  return { t: now(), procs, self: process.cpuUsage(), machine: machineTicks() };
}

// CPU seconds and share of one core per watched process, for the window a..b.
function cpuDelta(a, b) {
  const wall = (b.t - a.t) / 1000;
  const out = { wall_s: wall, procs: {} };
  for (const name of Object.keys(a.procs)) {
    if (a.procs[name] == null || b.procs[name] == null) {
      out.procs[name] = null;
      continue;
    }
    // user and kernel time apart: a relay's kernel share (send, recv, epoll) is the part
    // no user-space change removes
    const user = (b.procs[name].user - a.procs[name].user) / CLK_TCK;
    const sys = (b.procs[name].sys - a.procs[name].sys) / CLK_TCK;
    const sec = user + sys;
    out.procs[name] = { cpu_s: sec, user_s: user, sys_s: sys, pct_core: (100 * sec) / wall };
  }
  const selfSec = (b.self.user - a.self.user + b.self.system - a.self.system) / 1e6;
  out.client = { cpu_s: selfSec, pct_core: (100 * selfSec) / wall };
  const total = b.machine.total - a.machine.total;
  const idle = b.machine.idle - a.machine.idle;
  out.machine_busy_pct = total > 0 ? (100 * (total - idle)) / total : null;
  return out;
}

// ---------------------------------------------------------------- helpers

function connect(url, timeoutMs) {
  return new WebSocket(url, {
    perMessageDeflate: false, // same terms on every path: no compression anywhere
    handshakeTimeout: timeoutMs || 10000,
    maxPayload: 64 * 1024 * 1024,
    skipUTF8Validation: true,
  });
}

function payload(size, binary) {
  if (binary) {
    const b = Buffer.alloc(size);
    for (let i = 0; i < size; i++) b[i] = 97 + (i % 26);
    return b;
  }
  let s = '';
  for (let i = 0; i < size; i++) s += String.fromCharCode(97 + (i % 26));
  return s;
}

function getJson(url, timeoutMs) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs || 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        try {
          resolve(JSON.parse(body));
        } catch (e) {
          resolve(null);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

async function backendCounts() {
  const out = [];
  for (const u of spec.metric_urls || []) {
    const j = await getJson(u);
    out.push(j && Number.isInteger(j.agentsConnections) ? j.agentsConnections : null);
  }
  return out;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function countInc(map, key) {
  map[key] = (map[key] || 0) + 1;
}

// ---------------------------------------------------------------- scenarios

async function probe() {
  const until = now() + (spec.timeout || 20) * 1000;
  const results = [];
  for (const url of urls) {
    let ok = false;
    let lastError = '';
    while (!ok && now() < until) {
      ok = await new Promise((resolve) => {
        const ws = connect(url, 3000);
        const t = setTimeout(() => {
          lastError = 'timeout';
          ws.terminate();
          resolve(false);
        }, 3000);
        ws.on('open', () => ws.send('probe'));
        ws.on('message', (d) => {
          clearTimeout(t);
          ws.close(1000);
          resolve(String(d) === 'probe');
        });
        ws.on('error', (e) => {
          lastError = String(e.message || e);
          clearTimeout(t);
          resolve(false);
        });
      });
      if (!ok) await sleep(200);
    }
    results.push({ url, ok, error: ok ? null : lastError });
  }
  finish({ scenario: 'probe', results, all_ok: results.every((r) => r.ok) });
}

async function echo() {
  const conns = spec.conns;
  const inflight = spec.inflight || 1;
  const size = spec.size;
  const binary = spec.binary !== false;
  const msg = payload(size, binary);
  const warmup = (spec.warmup || 0.5) * 1000;
  const duration = spec.duration * 1000;
  // Paced: `rate` messages per second in total, spread round-robin over the connections,
  // each sent on schedule whether or not earlier ones were answered (an open-loop load).
  const rate = spec.rate || 0;

  const lat = new Float64Array(spec.max_latency_samples || 2000000);
  let latN = 0;
  let measuring = false;
  let sending = true;
  let echoes = 0;
  let bad = 0;
  let errors = 0;
  let dropped = 0;
  const closeCodes = {};
  const errorKinds = {};
  let outstanding = 0;

  const sockets = [];
  // open all connections first (bounded by the handshake timeout), at most 100 at a time
  for (let first = 0; first < conns; first += 100) {
  await Promise.all(
    Array.from({ length: Math.min(100, conns - first) }, (_, k) => first + k).map((i) =>
      new Promise((resolve) => {
        const ws = connect(urls[i % urls.length]);
        ws.binaryType = 'nodebuffer';
        ws.sentAt = [];
        ws.opened = false;
        ws.on('open', () => {
          ws.opened = true;
          sockets.push(ws);
          resolve();
        });
        ws.on('error', (e) => {
          errors += 1;
          countInc(errorKinds, String(e.message || e).slice(0, 80));
          resolve();
        });
        ws.on('close', (code) => {
          if (sending) {
            dropped += ws.opened ? 1 : 0;
            countInc(closeCodes, code);
          }
          outstanding -= ws.sentAt.length;
          ws.sentAt.length = 0;
          resolve();
        });
        ws.on('message', (data) => {
          const t0 = ws.sentAt.shift();
          outstanding -= 1;
          if ((binary ? data.length : Buffer.byteLength(data)) !== size) bad += 1;
          if (measuring) {
            echoes += 1;
            if (latN < lat.length) lat[latN++] = now() - t0;
          }
          if (sending && !rate) {
            ws.sentAt.push(now());
            outstanding += 1;
            ws.send(msg, { binary });
          }
        });
      })
    )
  );
  }
  const opened = sockets.length;

  let pacer = null;
  if (rate) {
    const start = now();
    let sent = 0;
    let next = 0;
    pacer = setInterval(() => {
      if (!sending || !sockets.length) return;
      const due = Math.floor(((now() - start) * rate) / 1000);
      for (; sent < due; sent++) {
        const ws = sockets[next++ % sockets.length];
        if (ws.readyState !== 1) continue;
        ws.sentAt.push(now());
        outstanding += 1;
        ws.send(msg, { binary });
      }
    }, 1);
  } else {
    for (const ws of sockets) {
      for (let k = 0; k < inflight; k++) {
        ws.sentAt.push(now());
        outstanding += 1;
        ws.send(msg, { binary });
      }
    }
  }
  await sleep(warmup);
  measuring = true;
  const a = sample();
  await sleep(duration);
  const b = sample();
  measuring = false;
  const counted = echoes;
  sending = false;
  if (pacer) clearInterval(pacer);
  // drain what is still in flight, bounded
  const drainUntil = now() + 5000;
  while (outstanding > 0 && now() < drainUntil) await sleep(20);
  const undrained = outstanding;
  for (const ws of sockets) ws.close(1000);
  await sleep(100);

  const cpu = cpuDelta(a, b);
  const sorted = Array.from(lat.subarray(0, latN)).sort((x, y) => x - y);
  finish({
    scenario: 'echo',
    conns,
    opened,
    inflight,
    rate,
    size,
    binary,
    echoes: counted,
    echoes_per_s: counted / cpu.wall_s,
    mbytes_per_s: (counted * size) / cpu.wall_s / 1e6,
    lat_ms: { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.length ? sorted[sorted.length - 1] : null },
    bad_echoes: bad,
    errors,
    error_kinds: errorKinds,
    dropped,
    close_codes: closeCodes,
    undrained,
    cpu,
  });
}

async function sessions() {
  const concurrency = spec.concurrency;
  const size = spec.size || 32;
  const msg = payload(size, true);
  const warmup = (spec.warmup || 0.5) * 1000;
  const duration = spec.duration * 1000;
  const maxSessions = spec.max_sessions || 1e9;
  let measuring = false;
  let running = true;
  let done = 0;
  let started = 0;
  let errors = 0;
  const errorKinds = {};
  const closeCodes = {};
  let next = 0;

  function one() {
    return new Promise((resolve) => {
      const ws = connect(urls[next++ % urls.length]);
      let echoed = false;
      let failed = false;
      const fail = (why) => {
        if (failed) return;
        failed = true;
        errors += 1;
        countInc(errorKinds, why);
      };
      ws.on('open', () => ws.send(msg, { binary: true }));
      ws.on('message', (d) => {
        if (d.length !== size) fail('bad echo');
        echoed = true;
        ws.close(1000);
      });
      ws.on('error', (e) => fail(String(e.message || e).slice(0, 80)));
      ws.on('close', (code) => {
        countInc(closeCodes, code);
        if (!echoed) fail(`closed before echo (${code})`);
        else if (code !== 1000) fail(`close code ${code}`);
        resolve(!failed);
      });
    });
  }

  async function worker() {
    while (running && started < maxSessions) {
      started += 1;
      const ok = await one();
      if (ok && measuring) done += 1;
    }
  }

  const workers = Array.from({ length: concurrency }, worker);
  await sleep(warmup);
  measuring = true;
  const a = sample();
  await sleep(duration);
  const b = sample();
  measuring = false;
  running = false;
  await Promise.race([Promise.all(workers), sleep(10000)]);
  const cpu = cpuDelta(a, b);
  finish({
    scenario: 'sessions',
    concurrency,
    sessions: done,
    sessions_per_s: done / cpu.wall_s,
    started,
    errors,
    error_kinds: errorKinds,
    close_codes: closeCodes,
    cpu,
  });
}

async function idle() {
  const count = spec.count;
  const concurrency = spec.concurrency || 100;
  const proxyPid = spec.pids && spec.pids.proxy;
  const settle = (spec.settle || 1.5) * 1000;
  await sleep(settle);
  const rssBefore = proxyPid ? procRssKiB(proxyPid) : null;
  const countsBefore = await backendCounts();

  const sockets = [];
  let errors = 0;
  let droppedWhileIdle = 0;
  const errorKinds = {};
  let holding = true;
  let next = 0;
  const t0 = now();
  async function opener() {
    while (next < count) {
      const i = next++;
      await new Promise((resolve) => {
        const ws = connect(urls[i % urls.length], 20000);
        ws.on('open', () => {
          sockets.push(ws);
          resolve();
        });
        ws.on('error', (e) => {
          errors += 1;
          countInc(errorKinds, String(e.message || e).slice(0, 80));
          resolve();
        });
        ws.on('close', () => {
          if (holding) droppedWhileIdle += 1;
          resolve();
        });
      });
    }
  }
  await Promise.all(Array.from({ length: concurrency }, opener));
  const openSeconds = (now() - t0) / 1000;
  await sleep(settle);
  const rssAfter = proxyPid ? procRssKiB(proxyPid) : null;
  const countsDuring = await backendCounts();
  const stillOpen = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;

  // one echo on a sample of them shows the idle sessions are really relayed
  const probeN = Math.min(50, sockets.length);
  let probeOk = 0;
  await Promise.all(
    sockets.slice(0, probeN).map(
      (ws) =>
        new Promise((resolve) => {
          const t = setTimeout(resolve, 5000);
          ws.once('message', () => {
            probeOk += 1;
            clearTimeout(t);
            resolve();
          });
          try {
            ws.send('x');
          } catch (e) {
            clearTimeout(t);
            resolve();
          }
        })
    )
  );

  holding = false;
  const t1 = now();
  for (const ws of sockets) ws.close(1000);
  // wait for the backends to see every session go, bounded
  let countsAfter = await backendCounts();
  const closeUntil = now() + (spec.close_timeout || 30) * 1000;
  while (countsAfter.some((c) => c == null || c > 0) && now() < closeUntil) {
    await sleep(200);
    countsAfter = await backendCounts();
  }
  const closeSeconds = (now() - t1) / 1000;
  await sleep(500);
  const rssClosed = proxyPid ? procRssKiB(proxyPid) : null;
  finish({
    scenario: 'idle',
    count,
    opened: sockets.length,
    still_open: stillOpen,
    errors,
    error_kinds: errorKinds,
    dropped_while_idle: droppedWhileIdle,
    open_s: openSeconds,
    close_s: closeSeconds,
    rss_before_kib: rssBefore,
    rss_after_kib: rssAfter,
    rss_closed_kib: rssClosed,
    rss_per_session_kib: rssBefore != null && rssAfter != null && sockets.length ? (rssAfter - rssBefore) / sockets.length : null,
    backend_counts_before: countsBefore,
    backend_counts_during: countsDuring,
    backend_counts_after: countsAfter,
    probe_echoes: `${probeOk}/${probeN}`,
  });
}

async function storm() {
  const count = spec.count;
  const inflight = spec.inflight || count; // default: every connection at once
  const timeoutMs = (spec.timeout || 60) * 1000;
  const startAt = spec.start_at || Date.now();
  const epoch = () => performance.timeOrigin + performance.now();
  const opens = []; // ms from start_at to each open
  const statuses = {}; // "503 retry-after" / "503" / "502" ...
  const retryAfter = [];
  const errorKinds = {};
  const sockets = [];
  let answered = 0;
  let droppedAfterOpen = 0;
  let holding = true;
  let next = 0;
  let allAnswered;
  const done = new Promise((resolve) => (allAnswered = resolve));

  function answer() {
    answered += 1;
    if (answered === count) allAnswered();
    else if (next < count) launch();
  }

  function launch() {
    const i = next++;
    const ws = connect(urls[i % urls.length], timeoutMs);
    let settled = false;
    const settle = () => {
      if (settled) return false;
      settled = true;
      return true;
    };
    ws.on('open', () => {
      ws.wasOpen = true;
      if (!settle()) return;
      opens.push(epoch() - startAt);
      sockets.push(ws);
      answer();
    });
    ws.on('unexpected-response', (req, res) => {
      if (settle()) {
        const ra = res.headers['retry-after'];
        countInc(statuses, ra !== undefined ? `${res.statusCode} retry-after` : `${res.statusCode}`);
        if (ra !== undefined) retryAfter.push(Number(ra));
        answer();
      }
      res.resume();
      req.destroy();
    });
    ws.on('error', (e) => {
      if (settle()) {
        countInc(errorKinds, String(e.message || e).slice(0, 80));
        answer();
      }
    });
    ws.on('close', () => {
      if (ws.wasOpen && holding) droppedAfterOpen += 1;
    });
  }

  const wait = startAt - Date.now();
  if (wait > 0) await sleep(wait);
  const cpu0 = process.cpuUsage();
  const t0 = epoch();
  for (let k = 0; k < Math.min(inflight, count); k++) launch();
  await Promise.race([done, sleep(timeoutMs + 5000)]);
  const cpu1 = process.cpuUsage();
  const wallS = (epoch() - t0) / 1000;
  const clientCpuS = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / 1e6;
  opens.sort((x, y) => x - y);
  retryAfter.sort((x, y) => x - y);
  clearTimeout(deadline);
  process.stdout.write(
    JSON.stringify({
      ok: true,
      scenario: 'storm',
      count,
      inflight,
      start_at: startAt,
      late_start_ms: t0 - startAt,
      opened: opens.length,
      statuses,
      retry_after: { n: retryAfter.length, min: retryAfter[0] ?? null, max: retryAfter[retryAfter.length - 1] ?? null },
      errors: errorKinds,
      unanswered: count - answered,
      still_open: sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length,
      dropped_after_open: droppedAfterOpen,
      open_ms: {
        first: opens[0] ?? null,
        p50: percentile(opens, 50),
        p99: percentile(opens, 99),
        last: opens.length ? opens[opens.length - 1] : null,
      },
      client_cpu_s: clientCpuS,
      client_pct_core: (100 * clientCpuS) / wallS,
      wall_s: wallS,
    }) + '\n'
  );
  // Hold the sessions until told (stdin ends), then close them and leave.
  await new Promise((resolve) => {
    process.stdin.on('end', resolve);
    process.stdin.on('error', resolve);
    process.stdin.resume();
  });
  holding = false;
  for (const ws of sockets) ws.close(1000);
  const until = now() + (spec.close_timeout || 20) * 1000;
  while (sockets.some((ws) => ws.readyState !== WebSocket.CLOSED) && now() < until) await sleep(50);
  process.exit(0);
}

const scenarios = { probe, echo, sessions, idle, storm };
if (!scenarios[spec.scenario]) {
  emit({ ok: false, error: `unknown scenario ${spec.scenario}` });
  process.exit(2);
}
scenarios[spec.scenario]().catch((e) => {
  emit({ ok: false, error: String(e && e.stack ? e.stack : e) });
  process.exit(5);
});
