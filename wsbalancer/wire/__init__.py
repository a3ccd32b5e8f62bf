"""The WebSocket wire: frames, compression, headers, flow control and the lean paths."""
