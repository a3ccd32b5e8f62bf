"""The public extension points, for users' session listeners and message hooks.

Subclass `SessionListener` or `MessageHook` (or implement `ISessionListener` /
`IMessageHook`) and name the class in `extensions:` by dotted path. This module only
re-exports; the code lives in `wsbalancer.relay.hooks` and `wsbalancer.relay.interfaces`.
"""

from wsbalancer.relay.hooks import MessageHook, SessionListener

__all__ = ["MessageHook", "SessionListener"]
