// A real Socket.IO 4 server for wsbalancer's affinity tests.
// Usage: node server.mjs PORT SERVER_ID
// Acknowledges "ask" events with its id and the transport in use, and reports on GET /stats
// which engine.io sessions it created and how many requests arrived for sessions it does not
// know (each such request is what breaks a Socket.IO session behind a balancer without
// affinity). Every HTTP response carries X-Server-Id.
import { createServer } from "node:http";
import { Server } from "socket.io";

const [port, serverId] = process.argv.slice(2);
const sessions = new Map(); // engine.io session id -> transports seen
let foreign = 0;
let requests = 0;

function note(req) {
  const url = new URL(req.url, "http://balancer.invalid");
  if (!url.pathname.startsWith("/socket.io/")) return;
  requests += 1;
  const sid = url.searchParams.get("sid");
  if (sid === null) return; // a handshake: the session is created below
  const seen = sessions.get(sid);
  if (seen === undefined) foreign += 1;
  else seen.add(url.searchParams.get("transport"));
}

// The browser test's page: connects with default transports, reports into window.report.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><meta name="server" content="SERVER_ID">
<title>Socket.IO through wsbalancer</title></head>
<body><h1>Socket.IO through wsbalancer</h1><pre id="log"></pre>
<script src="/socket.io/socket.io.js"></script>
<script>
window.report = null;
const report = {
  pageServer: document.querySelector("meta[name=server]").content,
  cookieVisible: document.cookie.includes("wsb_backend"),
  acks: [], error: null, transport: null,
};
const show = (text) => { document.getElementById("log").textContent += text + "\\n"; };
const socket = io({ reconnection: false });
socket.on("connect_error", (e) => { report.error = "connect_error: " + e.message; window.report = report; });
socket.on("connect", async () => {
  try {
    report.acks.push(await socket.timeout(5000).emitWithAck("ask", 1));
    show("ack 1 over " + socket.io.engine.transport.name);
    const engine = socket.io.engine;
    if (engine.transport.name !== "websocket") {
      await new Promise((ok, fail) => { engine.once("upgrade", ok); setTimeout(() => fail(new Error("no upgrade within 5s")), 5000); });
    }
    report.acks.push(await socket.timeout(5000).emitWithAck("ask", 2));
    report.acks.push(await socket.timeout(5000).emitWithAck("ask", 3));
    report.transport = socket.io.engine.transport.name;
    show("acks 2 and 3 over " + report.transport + " from " + report.acks[2].server);
  } catch (e) {
    report.error = String(e);
  }
  window.report = report;
});
</script></body></html>`;

const http = createServer((req, res) => {
  if (req.url === "/stats") {
    const body = JSON.stringify({
      id: serverId,
      sessions: Object.fromEntries([...sessions].map(([sid, t]) => [sid, [...t]])),
      foreign,
      requests,
    });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(body);
  } else if (req.url === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(PAGE.replace("SERVER_ID", serverId));
  } else if (!req.url.startsWith("/socket.io/")) {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  }
});
const io = new Server(http, { pingInterval: 5000, pingTimeout: 5000 });
// After the Server attached (engine.io re-registers the request listeners it finds).
http.prependListener("request", (req, res) => {
  res.setHeader("X-Server-Id", serverId);
  note(req);
});
http.prependListener("upgrade", note);
io.engine.on("connection", (conn) => sessions.set(conn.id, new Set([conn.transport.name])));
io.on("connection", (socket) => {
  socket.on("ask", (n, ack) => ack({ server: serverId, n, transport: socket.conn.transport.name }));
});
http.listen(Number(port), "127.0.0.1", () => console.log(`listening ${serverId} ${port}`));
process.on("SIGTERM", () => process.exit(0));
