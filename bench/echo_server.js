#!/usr/bin/env node
// A fast WebSocket echo backend for bench/run.py (Node.js + ws).
//
//   node echo_server.js [--port 0] [--host 127.0.0.1] [--name b1]
//
// Echoes every message back as it came (text stays text, binary stays binary) on any path.
// GET /metric answers {"agentsConnections": N, ...}, the shape wsbalancer polls for its
// least-loaded pick. GET /upgrades?since=MS lists when each upgrade request arrived (ms since
// the epoch), so bench/storm.py can count the upgrades this backend saw per second. Prints one line `LISTENING <port>` on stdout once it accepts
// connections (port 0 picks a free port), and exits on SIGTERM/SIGINT or when its parent's
// stdin closes, so it cannot outlive bench/run.py.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '0'));
const name = arg('name', `echo-${process.pid}`);

let open = 0;
let accepted = 0;
let messages = 0;
// Arrival of each upgrade request, ms since the epoch (sub-ms); bounded, a bench holds fewer.
const upgradeTimes = [];
const MAX_UPGRADE_TIMES = 1000000;

const server = http.createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (req.method === 'GET' && path === '/metric') {
    const body = JSON.stringify({
      agentsConnections: open,
      name,
      accepted,
      messages,
    });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  if (req.method === 'GET' && path === '/upgrades') {
    const since = Number(new URL(req.url, 'http://x').searchParams.get('since') || 0);
    const body = JSON.stringify({ name, times: upgradeTimes.filter((t) => t >= since) });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});
server.keepAliveTimeout = 60000;
// Registered before ws's own listener, so the time is taken as the request head arrives.
server.on('upgrade', () => {
  if (upgradeTimes.length < MAX_UPGRADE_TIMES) upgradeTimes.push(performance.timeOrigin + performance.now());
});

const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 64 * 1024 * 1024,
  skipUTF8Validation: true, // an echo does not need it; keeps the backend cheap
});

wss.on('connection', (ws) => {
  open += 1;
  accepted += 1;
  ws.on('message', (data, isBinary) => {
    messages += 1;
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', () => {});
  ws.on('close', () => {
    open -= 1;
  });
});

server.listen({ host, port, backlog: 4096 }, () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function stop() {
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// bench/run.py keeps our stdin open as a pipe; when it dies, stdin ends and so do we.
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
