"""Extensions loaded by dotted name in test_extensions.py (and an example for users)."""

from __future__ import annotations

from typing import Any

from wsbalancer.extensions import MessageHook, SessionListener

EVENTS: list[tuple[Any, ...]] = []


class RecordingListener(SessionListener):
    """Remembers every session event in EVENTS."""

    def session_opened(self, session: Any) -> None:
        EVENTS.append(("opened", session.id, session.backend_state.id))

    def backend_picked(self, session: Any, backend_id: str) -> None:
        EVENTS.append(("picked", session.id, backend_id))

    def failed_over(self, session: Any, old: str | None, new: str | None, reason: str) -> None:
        EVENTS.append(("failed_over", session.id, old, new))

    def session_closed(self, session: Any) -> None:
        EVENTS.append(("closed", session.id, session.close_code))


class UpperCase(MessageHook):
    """Upper-cases text on its way to the backend."""

    def client_to_backend(self, session: Any, payload: bytes, is_binary: bool) -> Any:
        return (payload if is_binary else payload.upper()), is_binary


class DropSecrets(MessageHook):
    """Drops client messages that mention a secret, and backend ones that say "internal"."""

    def client_to_backend(self, session: Any, payload: bytes, is_binary: bool) -> Any:
        return None if b"secret" in payload.lower() else (payload, is_binary)

    def backend_to_client(self, session: Any, payload: bytes, is_binary: bool) -> Any:
        return None if payload.startswith(b"internal") else (payload, is_binary)
