"""Where this API listens: the URL its launched workers report to (their DORA_API_URL).

An explicit ``DORA_API_URL`` wins. Otherwise the address comes from the
running server, never from DORA_API_HOST/DORA_API_PORT alone: those are what
``python -m backend`` binds, but ``uvicorn backend.main:app --port P`` or
gunicorn bind what their own command line says. So:

1. the listening TCP socket of this process (uvicorn's, or the one gunicorn
   bound before starting its worker), read from the kernel; a wildcard bind
   (0.0.0.0, ::) is reached through loopback;
2. when that finds nothing unique (several servers in one process, no
   ``/proc`` or ``/dev/fd``), the address a request arrived at (ASGI
   ``scope["server"]``, the connection's local end, not the Host header);
3. DORA_API_HOST:DORA_API_PORT (``Settings.configured_url``) when there is no
   socket at all: an app driven in-process (a request with no IP address, as
   under Starlette's TestClient), a Unix socket, or nothing found within
   ``grace_s`` of start-up.

Until one of these is known, launches wait in the queue: uvicorn runs the
app's start-up before it binds, so jobs left queued by an earlier API process
start at the watcher's first pass after the socket exists, not before.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.settings import Settings, http_url

# Longer than uvicorn takes from the app's start-up to its bind (milliseconds).
START_GRACE_S = 5.0


def listening_sockets() -> set[tuple[str, int]]:
    """(address, port) of every TCP socket this process listens on (Linux, macOS/BSD).

    Each open descriptor is duplicated, asked whether it is a listening TCP
    socket (``SO_ACCEPTCONN``) and where it is bound, and the duplicate closed.
    """
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    fd_dir = "/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd"
    if accepting is None or not os.path.isdir(fd_dir):
        return set()
    found = set()
    for name in os.listdir(fd_dir):
        if not name.isdigit():
            continue
        if fd_dir == "/proc/self/fd":  # skip files and pipes without touching them
            try:
                if not os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket, or closed meanwhile
            continue
        with sock:
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if sock.type != socket.SOCK_STREAM:
                    continue
                if not sock.getsockopt(socket.SOL_SOCKET, accepting):
                    continue
                host, port = sock.getsockname()[:2]
            except OSError:
                continue
        found.add((str(host), int(port)))
    return found


def socket_url(listening: set[tuple[str, int]]) -> str | None:
    """The one URL the listening sockets give, or None (none, or more than one port)."""
    if len({port for _, port in listening}) != 1:
        return None
    urls = sorted(http_url(host, port) for host, port in listening)
    # the same port on several addresses (0.0.0.0 and ::): IPv4 loopback reaches the first
    return next((u for u in urls if u.startswith("http://127.")), urls[0])


class ServerAddress:
    """The URL handed to workers; ``url()`` is None while it is not known yet."""

    def __init__(
        self,
        settings: Settings,
        grace_s: float = START_GRACE_S,
        probe: Callable[[], set[tuple[str, int]]] = listening_sockets,
    ):
        self.fallback = settings.configured_url
        self.grace_s, self.probe = grace_s, probe
        self._url: str | None = settings.api_url or None
        self.source = "DORA_API_URL" if self._url else None
        self._since: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def configured(cls, settings: Settings) -> ServerAddress:
        """DORA_API_URL, else DORA_API_HOST:DORA_API_PORT, without asking the server."""
        address = cls(settings)
        address._settle(settings.api_url or settings.configured_url, address.source or "settings")
        return address

    def start(self) -> None:
        """The app's start-up: from now on, ``grace_s`` without a socket means there is none."""
        self._since = time.monotonic()

    def url(self) -> str | None:
        """The workers' API URL once known; None while launches should wait for it."""
        if self._url is None:
            with self._lock:
                if self._url is None:
                    found = socket_url(self.probe())
                    if found:
                        self._settle(found, "socket")
                    elif self._since is not None and time.monotonic() - self._since > self.grace_s:
                        self._settle(self.fallback, "settings")
        return self._url

    def learn(self, server: Any) -> None:
        """A request arrived at ``server`` (ASGI ``scope["server"]``: (host, port) or None)."""
        if self._url is not None:
            return
        with self._lock:
            if self._url is not None:
                return
            host, port = (
                server if isinstance(server, list | tuple) and len(server) == 2 else ("", 0)
            )
            try:
                ipaddress.ip_address(str(host).split("%")[0])
            except ValueError:  # no network address: served in-process, or on a Unix socket
                self._settle(self.fallback, "settings")
                return
            found = socket_url(self.probe())  # the socket itself: maps a wildcard to loopback
            if found:
                self._settle(found, "socket")
            elif isinstance(port, int) and port > 0:
                self._settle(http_url(str(host), port), "request")

    def _settle(self, url: str, source: str) -> None:
        self._url, self.source = url, source


class LearnAddress:
    """ASGI middleware: tells ``address`` where each request arrived until it knows."""

    def __init__(self, app: Any, address: ServerAddress):
        self.app, self.address = app, address

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.address.source is None:
            self.address.learn(scope.get("server"))
        await self.app(scope, receive, send)
