"""wsbalancer: a WebSocket connection balancer on Twisted and Autobahn."""

__version__ = "0.1.0"
