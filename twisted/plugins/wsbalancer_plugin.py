"""twistd plugin: `twistd wsbalancer --config FILE`. Imports nothing of the package at load."""

from twisted.application.service import ServiceMaker

wsbalancer = ServiceMaker(
    "wsbalancer",
    "wsbalancer.service.tap",
    "A WebSocket connection balancer relaying each session to the least-loaded backend.",
    "wsbalancer",
)
