"""A TCP proxy on loopback that can lose a reply: "sent, applied, never answered".

Each client connection gets its own upstream connection to the server; frames go
through unchanged. After :meth:`Proxy.lose_reply_to` names an op, the next request
with that op is forwarded, the server's reply to it is read and thrown away, and both
connections are closed — what a client sees when a server dies right after applying a
request.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

import orjson

from kilndb.codec import FrameDecoder, encode_frame

__all__ = ["Proxy"]


def _frames(sock: socket.socket, decoder: FrameDecoder) -> bytes | None:
    """The next frame body read from ``sock`` (None at end of file)."""
    while (body := decoder.next_frame()) is None:
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        decoder.feed(data)
    return body


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` (``host, port``)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._lose: str | None = None
        self._then: Callable[[], object] | None = None
        self._lock = threading.Lock()
        #: Ops whose reply the proxy threw away.
        self.lost: list[str] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_to(self, op: str, then: Callable[[], object] | None = None) -> None:
        """Lose the reply to the next request whose op is ``op`` (then drop that client).
        ``then`` runs once the reply is thrown away and before the client's connection
        closes — a server that dies (``then`` stops it) right after applying a request."""
        with self._lock:
            self._lose = op
            self._then = then

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Relay one request at a time: a request frame up, its reply frame down (the
        clients under test wait for each reply, except pipelines, relayed in order)."""
        from_client, from_server = FrameDecoder(1 << 24), FrameDecoder(1 << 24)
        try:
            while (request := _frames(client, from_client)) is not None:
                op = orjson.loads(request).get("op")
                server.sendall(encode_frame(request))
                reply = _frames(server, from_server)
                if reply is None:
                    return
                with self._lock:
                    lose, self._lose = self._lose == op, None if self._lose == op else self._lose
                    then, self._then = (self._then, None) if lose else (None, self._then)
                if lose:
                    self.lost.append(op)
                    server.close()
                    if then is not None:
                        then()
                    return
                client.sendall(encode_frame(reply))
        except OSError:
            return
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
