"""Worker processes (`workers: N`, or `auto` for one per core) sharing the listening sockets.

The twistd process (the master) binds the listen endpoints, relays as worker 0, and starts
N-1 worker processes (`worker.py`), each handed the listening sockets as inherited file
descriptors: the kernel gives each new connection to one of the processes. Every worker is
a whole balancer with its own count poller and local accounting, so least-loaded picks stay
fair across workers exactly as across balancer instances: the backend-reported counts are
shared truth, and each process adds what it opened and closed since the last poll.

The admin endpoint is the master's. Each worker serves an admin site of its own on a Unix
socket in a private directory, and the master:

- repeats every successful change made through `/api/backends` and `/api/frontends` on each
  worker (and replays them, in order, to a worker that had to be restarted before it
  accepts a connection), so drained, disabled and added backends are the same everywhere;
- sends calls about one session to the worker holding it (session ids are numbered per
  worker: worker i's start at i × 10¹²) and merges the session list;
- merges `/metrics` (counters, histograms and session gauges summed across workers) and the
  JSON metrics (sessions and local counts summed).

SIGHUP is passed on (every worker re-reads the configuration itself); SIGTERM drains every
worker in parallel; a worker that dies is restarted, with a growing delay if it keeps dying.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from wsbalancer.observe.logs import logger

_log = logger("wsbalancer.workers")

WORKER_ENV = "WSBALANCER_WORKER"
# Environment a worker must not inherit: systemd's readiness socket and socket-activation
# variables belong to the master alone.
_MASTER_ONLY_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", WORKER_ENV)
_RESTART_DELAY = 1.0
_RESTART_DELAY_MAX = 30.0
_STABLE_AFTER = 10.0  # a worker that ran this long restarts after the shortest delay again


class WorkerStartError(RuntimeError):
    """The worker processes cannot be started; the message is the operator's one line."""


class _QuietHTTPFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line per connection to a worker


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    """Every request of an Agent goes to one Unix socket."""

    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> Any:
        return UNIXClientEndpoint(self.reactor, self.path, timeout=5)


class WorkerProcess(ProcessProtocol):
    """One worker process, as the master sees it: it says READY on stdout once its admin
    socket listens, and starts accepting when the master answers GO on its stdin."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ready = False
        self.started = pool.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._line = b""

    @property
    def pid(self) -> int | None:
        return getattr(self.transport, "pid", None)

    def outReceived(self, data: bytes) -> None:
        self._line += data
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            if line.strip() == b"READY" and not self.ready:
                defer.ensureDeferred(self.pool.worker_ready(self))

    def processEnded(self, reason: Any) -> None:
        self.ready = False
        self.pool.worker_ended(self, reason.value)
        self.ended.callback(None)


class WorkerPool(Service):
    """The master's worker processes: started, restarted, told about admin changes, asked
    for their metrics, drained."""

    def __init__(
        self,
        listeners: list[Any],
        secret_seed: bytes,
        count: int,
        spec: dict[str, Any],
        reactor: Any,
    ):
        self.listeners = listeners  # the master's listening sockets, which workers share
        self.secret_seed = secret_seed  # workers derive the same affinity keys from it
        self.count = count
        self.spec = spec  # what a worker loads its configuration from (file, overrides)
        self.reactor = reactor
        self.workers: dict[int, WorkerProcess] = {}
        self.journal: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.stopping = False
        self.restart_delay: dict[int, float] = {}
        self.directory = ""
        self._clients: dict[int, HTTPClient] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self.directory = tempfile.mkdtemp(prefix="wsbalancer-workers-")  # mode 0700
        except OSError as e:  # a read-only root with no writable /tmp, say
            raise WorkerStartError(
                f"workers: {self.count} processes talk over Unix sockets in a temporary "
                f"directory, and none is writable (set TMPDIR, mount one at /tmp, or set "
                f"workers: 1): {e}"
            ) from e
        for index in range(1, self.count):
            self._spawn(index)
        _log.info("started {n} worker processes beside this one", n=self.count - 1)

    def socket_path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        fds: dict[int, Any] = {0: "w", 1: "r", 2: 2}
        listens = []
        for n, listener in enumerate(self.listeners):
            port = listener.port
            fd = 3 + n
            fds[fd] = port.fileno()
            listens.append(
                {"fd": fd, "family": int(port.addressFamily), "description": listener.description}
            )
        spec = {
            **self.spec,
            "index": index,
            "processes": self.count,  # each takes its share of admission.rate
            "listens": listens,
            "admin": self.socket_path(index),
            "secret_seed": self.secret_seed.hex(),  # the same affinity keys
        }
        env = {k: v for k, v in os.environ.items() if k not in _MASTER_ONLY_ENV}
        env[WORKER_ENV] = json.dumps(spec)
        process = WorkerProcess(self, index)
        self.workers[index] = process
        self.reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-m", "wsbalancer.service.worker"],
            env=env,
            childFDs=fds,
        )

    async def worker_ready(self, process: WorkerProcess) -> None:
        """Replay the admin changes made so far (those made meanwhile too), then let the
        worker accept connections."""
        done = 0
        while done < len(self.journal):
            method, path, body, headers = self.journal[done]
            done += 1
            try:
                await self.call(process.index, method, path, body, headers)
            except Exception as e:
                _log.error(
                    "worker {index}: replaying {method} {path} failed: {error}",
                    index=process.index,
                    method=method,
                    path=path,
                    error=str(e),
                )
        if process.transport is not None and self.workers.get(process.index) is process:
            process.ready = True
            process.transport.write(b"GO\n")

    def worker_ended(self, process: WorkerProcess, reason: Any) -> None:
        if self.workers.get(process.index) is process:
            del self.workers[process.index]
        self._clients.pop(process.index, None)
        if self.stopping:
            return
        lived = self.reactor.seconds() - process.started
        delay = self.restart_delay.get(process.index, _RESTART_DELAY)
        if lived >= _STABLE_AFTER:
            delay = _RESTART_DELAY
        self.restart_delay[process.index] = min(delay * 2, _RESTART_DELAY_MAX)
        _log.error(
            "worker {index} (pid {pid}) ended unexpectedly ({reason}); restarting in {delay:g}s",
            index=process.index,
            pid=process.pid,
            reason=str(reason),
            delay=delay,
        )
        self.reactor.callLater(delay, self._spawn, process.index)

    def signal_all(self, signal_name: str) -> None:
        """Send a signal to every worker (HUP to reload, TERM to drain and stop)."""
        for process in list(self.workers.values()):
            transport: Any = process.transport
            try:
                transport.signalProcess(signal_name)
            except Exception:
                pass  # it has just ended

    async def drain(self, timeout: float) -> None:
        """Drain and stop every worker (they drain in parallel); killed after `timeout`."""
        self.stopping = True
        processes = list(self.workers.values())
        self.signal_all("TERM")
        waiting = defer.DeferredList([p.ended for p in processes])
        timer = self.reactor.callLater(timeout, self.signal_all, "KILL")
        await waiting
        if timer.active():
            timer.cancel()

    def stopService(self) -> Any:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.workers:
            await self.drain(5.0)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- talking to workers -------------------------------------------------------------------

    def _client(self, index: int) -> HTTPClient:
        client = self._clients.get(index)
        if client is None:
            pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool._factory = _QuietHTTPFactory
            pool.maxPersistentPerHost = 2
            agent = Agent.usingEndpointFactory(
                self.reactor, _UnixSocket(self.reactor, self.socket_path(index)), pool=pool
            )
            client = self._clients[index] = HTTPClient(agent)
        return client

    async def call(
        self,
        index: int,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One admin request to one worker; (status, body)."""
        response = await self._client(index).request(
            method,
            "http://worker" + path,
            data=body or None,
            headers={k: [v] for k, v in (headers or {}).items()},  # type: ignore[arg-type]
            timeout=10,
        )
        return response.code, await response.content()

    def forget_backend_changes(self) -> None:
        """A reload re-read the backends everywhere: their API changes are history now."""
        self.journal = [entry for entry in self.journal if "/api/backends" not in entry[1]]

    def ready_workers(self) -> list[int]:
        return sorted(i for i, p in self.workers.items() if p.ready)

    async def broadcast(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        """Repeat an admin change on every worker, and remember it for restarted ones."""
        self.journal.append((method, path, body, headers))
        calls = [self._logged(i, method, path, body, headers) for i in self.ready_workers()]
        await defer.gatherResults([defer.ensureDeferred(c) for c in calls])

    async def _logged(
        self, index: int, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> bytes | None:
        try:
            status, answer = await self.call(index, method, path, body, headers)
        except Exception as e:
            _log.error(
                "worker {index}: {method} {path} failed: {error}",
                index=index,
                method=method,
                path=path,
                error=str(e) or e.__class__.__name__,
            )
            return None
        if status >= 300:
            _log.warn(
                "worker {index}: {method} {path} answered {status}",
                index=index,
                method=method,
                path=path,
                status=status,
            )
            return None
        return answer

    async def gather(
        self, path: str, headers: dict[str, str] | None = None
    ) -> list[tuple[int, bytes]]:
        """GET `path` from every ready worker; (worker index, body) of those that answered."""
        indexes = self.ready_workers()
        calls = [self._logged(i, "GET", path, b"", headers or {}) for i in indexes]
        answers = await defer.gatherResults([defer.ensureDeferred(c) for c in calls])
        return [(i, a) for i, a in zip(indexes, answers, strict=True) if a is not None]
