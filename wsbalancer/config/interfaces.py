"""What a part of the running balancer offers a reload (buildbot's reconfigurable shape)."""

from typing import Any

from zope.interface import Interface


class IReconfigurable(Interface):
    """A part that takes a new, already validated configuration while running."""

    def reconfigure(new: Any) -> list[str]:
        """Apply `new` (a Config) to this part; one line per change, for the log and API."""
