"""The connection states and close codes every floor above speaks of, named once."""

from autobahn.websocket.protocol import WebSocketProtocol

CONNECTING = WebSocketProtocol.STATE_CONNECTING
OPEN = WebSocketProtocol.STATE_OPEN
CLOSED = WebSocketProtocol.STATE_CLOSED
# 1014 (Bad Gateway) is registered with IANA; a backend or a balancer in front may send it.
ALLOWED_CLOSE_CODES = [*WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED, 1014]

CLOSE_GOING_AWAY = 1001
NO_CLOSE_FRAME = 1006  # never on the wire: the connection ended without a close frame
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_GATEWAY = 1014
# Codes that can never appear on the wire; each is translated when carried across.
NOT_ON_WIRE = (1005, 1006, 1015)
