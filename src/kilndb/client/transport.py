"""A blocking connection to a KilnDB server: send a request, read its reply.

``tcp://``, ``tls://`` and ``unix://`` URLs (see :class:`~kilndb.client.endpoint.Endpoint`).
One request at a time per connection, guarded by a lock, so a :class:`Connection` can
be shared by threads.
Server errors come back as the same :class:`~kilndb.KilnError` classes the server
raised; a broken or closed socket raises :class:`~kilndb.ConnectionLostError`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any

import orjson

from kilndb.client.core import message_of, reply_of
from kilndb.client.endpoint import Endpoint
from kilndb.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from kilndb.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    KilnError,
    ProtocolError,
    error_from_wire,
)

__all__ = ["Connection", "reply_of"]


#: Requests a pipeline keeps in flight (below the server's ``max_pipeline``).
PIPELINE_WINDOW = 512


class Connection:
    """One socket to a server, used request by request."""

    def __init__(
        self,
        endpoint: Endpoint | str,
        timeout: float | None = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        """``max_frame_bytes``: the largest frame accepted from the server."""
        self.endpoint = Endpoint.make(endpoint)
        self.url = self.endpoint.url
        self._sock: socket.socket | None = self.endpoint.open_socket(timeout)
        self._decoder = FrameDecoder(max_frame_bytes)
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def send(self, message: dict[str, Any]) -> None:
        try:
            body = orjson.dumps(message)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidArgumentError(f"request is not JSON-serialisable: {exc}") from exc
        self.send_frames(encode_frame(body))

    def send_frames(self, data: bytes) -> None:
        """Send encoded frames; ConnectionLostError if they could not all be sent."""
        sock = self._sock
        if sock is None:
            raise ConnectionLostError(f"connection to {self.url} is closed")
        try:
            sock.sendall(data)
        except OSError as exc:
            self._drop()
            raise ConnectionLostError(f"lost connection to {self.url}: {exc}") from exc

    def idle_and_broken(self) -> bool:
        """Whether this connection, waiting for no reply, is known to be unusable: closed
        here, or the server closed it (or sent something unasked, which it never does on
        a healthy one) — a request sent now would never be answered."""
        sock = self._sock
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            readable = [sock]
        if readable or self._decoder.buffered:
            self._drop()
            return True
        return False

    def receive(self) -> dict[str, Any]:
        """The next frame from the server, decoded (blocking)."""
        return message_of(self.receive_body())

    def receive_body(self) -> bytes:
        """The body of the next frame from the server, as it came (blocking)."""
        while True:
            try:
                body = self._decoder.next_frame()
            except ProtocolError:
                self._drop()
                raise
            if body is not None:
                return body
            sock = self._sock
            if sock is None:
                raise ConnectionLostError(f"connection to {self.url} is closed")
            try:
                data = sock.recv(256 * 1024)
            except OSError as exc:
                self._drop()
                raise ConnectionLostError(f"lost connection to {self.url}: {exc}") from exc
            if not data:
                self._drop()
                raise ConnectionLostError(f"the server at {self.url} closed the connection")
            self._decoder.feed(data)

    def hello(self, database: str) -> dict[str, Any]:
        """Open the conversation: select ``database`` and present the endpoint's token."""
        message = self.endpoint.hello(database)
        return self.call(message.pop("op"), **message)

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Send one request and return its successful reply; raise the server's error."""
        with self._lock:
            self.send({"op": op, **params})
            reply = self.receive()
        if not reply.get("ok"):
            raise error_from_wire(reply)
        return reply

    def call_body(self, op: str, **params: Any) -> bytes:
        """Send one request and return its reply's body undecoded, for a caller that
        decodes it its own way; :func:`reply_of` decodes it as :meth:`call` would."""
        with self._lock:
            self.send({"op": op, **params})
            return self.receive_body()

    def pipeline(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send requests back to back, ``PIPELINE_WINDOW`` at a time, and return their
        replies in order — errors included, not raised."""
        with self._lock:
            replies: list[dict[str, Any]] = []
            for start in range(0, len(messages), PIPELINE_WINDOW):
                window = messages[start : start + PIPELINE_WINDOW]
                sock = self._sock
                if sock is None:
                    raise ConnectionLostError(f"connection to {self.url} is closed")
                try:
                    data = b"".join(encode_frame(orjson.dumps(m)) for m in window)
                except (TypeError, orjson.JSONEncodeError) as exc:
                    raise InvalidArgumentError(f"request is not JSON-serialisable: {exc}") from exc
                try:
                    sock.sendall(data)
                except OSError as exc:
                    self._drop()
                    raise ConnectionLostError(f"lost connection to {self.url}: {exc}") from exc
                replies += [self.receive() for _ in window]
            return replies

    def close(self) -> None:
        """Say ``close``, read the server's ``ok`` (so the socket ends with FIN), close."""
        with self._lock:
            if self._sock is None:
                return
            try:
                self.send({"op": "close"})
                self.receive()
            except KilnError:
                pass
            self._drop()

    def set_timeout(self, timeout: float | None) -> None:
        """Change how long a receive may block (None: forever)."""
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def abandon(self) -> None:
        """Close the socket without the ``close`` handshake (it is broken or done). A
        thread blocked receiving on it wakes at once: ``close()`` alone would not wake it."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
