// Real socket.io-client sessions with default transports (polling first, then the upgrade).
// Usage: node clients.mjs URL COUNT [TIMEOUT_MS]
// Each session connects, gets an ack over polling, waits for the WebSocket upgrade, gets two
// more acks over it. All stay open until every one is done (so they overlap, as real users
// do), then one JSON line reports each session.
import { io } from "socket.io-client";

const [url, countText, timeoutText] = process.argv.slice(2);
const timeoutMs = Number(timeoutText || 15000);

function session(i) {
  return new Promise((resolve) => {
    // withCredentials: engine.io-client keeps cookies (the balancer's affinity cookie) in Node.
    const socket = io(url, { forceNew: true, reconnection: false, withCredentials: true, timeout: 5000 });
    const report = { i, connected: false, upgraded: false, acks: [], error: null };
    let done = false;
    const finish = (error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      report.error = error || null;
      report.transport = socket.io.engine ? socket.io.engine.transport.name : null;
      resolve({ report, socket });
    };
    const timer = setTimeout(() => finish("timed out"), timeoutMs);
    socket.on("connect_error", (e) => finish(`connect_error: ${e.message}`));
    socket.on("disconnect", (reason) => finish(`disconnected: ${reason}`));
    socket.on("connect", async () => {
      report.connected = true;
      report.sid = socket.io.engine.id;
      try {
        report.acks.push(await socket.timeout(5000).emitWithAck("ask", 1));
        const engine = socket.io.engine;
        if (engine.transport.name !== "websocket") {
          await new Promise((ok, fail) => {
            engine.once("upgrade", ok);
            engine.once("upgradeError", (e) => fail(new Error(`upgrade failed: ${e.message}`)));
            setTimeout(() => fail(new Error("no upgrade within 5s")), 5000);
          });
        }
        report.upgraded = socket.io.engine.transport.name === "websocket";
        report.acks.push(await socket.timeout(5000).emitWithAck("ask", 2));
        report.acks.push(await socket.timeout(5000).emitWithAck("ask", 3));
        finish(null);
      } catch (e) {
        finish(String(e && e.message ? e.message : e));
      }
    });
  });
}

const results = await Promise.all(Array.from({ length: Number(countText) }, (_, i) => session(i)));
for (const { socket } of results) socket.close();
console.log(JSON.stringify(results.map((r) => r.report)));
process.exit(0);
