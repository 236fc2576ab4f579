"""A loopback TCP proxy in front of the local S3 server that misbehaves on purpose.

Each new client connection, with fixed seeded probabilities, is answered with an HTTP 503
(S3's "SlowDown"), reset before any byte is answered, or delayed; the others are piped to
the server byte for byte. Faults hit connection starts, where clients must cope with
them (a retry on a fresh connection), not the middle of a response body. It listens on
127.0.0.1 only, runs in daemon threads and stops with its context manager.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

_SLOW_DOWN_BODY = (
    b"<?xml version='1.0' encoding='UTF-8'?>"
    b"<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>"
)
_SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + f"Content-Length: {len(_SLOW_DOWN_BODY)}\r\n\r\n".encode()
    + _SLOW_DOWN_BODY
)


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    p_503: float = 0.1
    p_reset: float = 0.05
    p_delay: float = 0.1
    delay_s: float = 0.2
    seed: int = 0
    counts: Counter = field(default_factory=Counter)
    _listener: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint_url(self) -> str:
        host, port = self._listener.getsockname()
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._rng = random.Random(self.seed)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()

    def _draw(self) -> str:
        with self._lock:
            u = self._rng.random()
        if u < self.p_503:
            return "503"
        if u < self.p_503 + self.p_reset:
            return "reset"
        if u < self.p_503 + self.p_reset + self.p_delay:
            return "delay"
        return "ok"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        fault = self._draw()
        with self._lock:
            self.counts[fault] += 1
        if fault == "reset":
            # SO_LINGER 0: close() sends RST, as a crashed or overloaded front end does.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        if fault == "503":
            client.settimeout(5)
            try:
                _read_headers(client)
                client.sendall(_SLOW_DOWN)
            except OSError:
                pass
            client.close()
            return
        if fault == "delay":
            time.sleep(self.delay_s)
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
        _pipe(client, server)


def _read_headers(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@contextmanager
def fault_proxy(endpoint_url: str, **faults) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``http://host:port``; yields it started."""
    host, port = endpoint_url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)), **faults)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
