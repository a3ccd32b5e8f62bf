// An ordinary `ws` echo server, as most Node.js WebSocket backends are: no /metric (a plain
// GET gets ws's own 426 Upgrade Required).
// Usage: node plain_ws.mjs PORT
import { WebSocketServer } from "ws";

const [port] = process.argv.slice(2);
const server = new WebSocketServer({ host: "127.0.0.1", port: Number(port) });
server.on("connection", (socket) => {
  socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
});
