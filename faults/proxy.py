"""A loopback TCP proxy in front of redis-server, to make the network misbehave on purpose.

It stands in for an endpoint name (ElastiCache's primary endpoint): ``switch`` points new
connections at another server, as the DNS name does after a failover, while connections
already open stay with the old one. ``cut_all`` drops every open connection at once, and
``lose_replies`` lets a command through to the server but drops its reply and the
connection, so the command has run and the client never hears of it: the worst moment for
a connection to die.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    server: socket.socket
    doomed: bool = False  # the next reply from the server is lost with the connection
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Proxy:
    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, port))
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._loss_probability = 0.0
        self._loss_match: bytes | None = None
        self._loss_budget = 0
        self._random = random.Random(7)
        self.replies_lost = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        self.cut_all()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------

    def switch(self, upstream: tuple[str, int]) -> None:
        """New connections go to ``upstream``; open ones stay where they are."""
        self.upstream = upstream

    def cut_all(self) -> int:
        """Reset every open connection, as a network blip or a node replacement would."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)
        return len(pairs)

    def lose_replies(self, *, probability: float = 0.0, match: bytes | None = None, count: int = 0) -> None:
        """From now on, lose the reply to a command: to each with ``probability``, or to the
        next ``count`` commands whose bytes contain ``match`` (case-insensitive)."""
        with self._lock:
            self._loss_probability = probability
            self._loss_match = match.lower() if match else None
            self._loss_budget = count

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- plumbing ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=2)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            threading.Thread(target=self._pump_up, args=(pair,), daemon=True, name="proxy-up").start()
            threading.Thread(target=self._pump_down, args=(pair,), daemon=True, name="proxy-down").start()

    def _pump_up(self, pair: _Pair) -> None:
        """client -> server"""
        while True:
            try:
                data = pair.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                return self._close(pair)
            if self._should_lose(data):
                pair.doomed = True
            try:
                pair.server.sendall(data)
            except OSError:
                return self._close(pair)

    def _pump_down(self, pair: _Pair) -> None:
        """server -> client"""
        while True:
            try:
                data = pair.server.recv(65536)
            except OSError:
                data = b""
            if not data:
                return self._close(pair)
            if pair.doomed:
                with self._lock:
                    self.replies_lost += 1
                return self._close(pair)
            try:
                pair.client.sendall(data)
            except OSError:
                return self._close(pair)

    def _should_lose(self, data: bytes) -> bool:
        with self._lock:
            if self._loss_match is not None and self._loss_budget > 0 and self._loss_match in data.lower():
                self._loss_budget -= 1
                return True
            return self._loss_probability > 0 and self._random.random() < self._loss_probability

    def _close(self, pair: _Pair) -> None:
        with pair.lock:
            if pair.closed:
                return
            pair.closed = True
        with self._lock:
            self._pairs.discard(pair)
        _reset(pair.client)
        _reset(pair.server)


def _reset(s: socket.socket) -> None:
    """Drop the connection at once (and wake the pump thread blocked reading it)."""
    for step in (
        lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        lambda: s.shutdown(socket.SHUT_RDWR),
        s.close,
    ):
        with contextlib.suppress(OSError):
            step()
