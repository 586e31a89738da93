"""Where a server is and how to reach it: URL, TLS and the token to present.

URLs: ``tcp://HOST:PORT``, ``tls://HOST:PORT`` (TCP with TLS) and ``unix:///PATH``.
``tls=True`` turns TLS on for a ``tcp://`` URL too. The server's certificate is checked
against ``ca_file`` (default: the system's CAs) and its host name; ``cert_file`` and
``key_file`` present a client certificate for mutual TLS. ``token`` (a JWT) is sent in
the ``hello`` that opens every connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kilndb.errors import ConnectionLostError, InvalidArgumentError

__all__ = ["Endpoint"]


@dataclass(frozen=True)
class Endpoint:
    """A server address with its TLS context and token."""

    url: str
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def make(
        cls,
        url: str | Endpoint,
        *,
        token: str | None = None,
        tls: bool | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> Endpoint:
        if isinstance(url, Endpoint):
            return url
        if not isinstance(url, str):
            raise InvalidArgumentError("the server URL must be a string")
        scheme = urlsplit(url).scheme
        if scheme not in ("tcp", "tls", "unix"):
            raise InvalidArgumentError(
                f"bad server URL {url!r}: use tcp://HOST:PORT, tls://HOST:PORT or unix:///PATH"
            )
        if token is not None and (not isinstance(token, str) or not token):
            raise InvalidArgumentError("token must be a non-empty string")
        context = None
        if scheme == "tls" or tls:
            if scheme == "unix":
                raise InvalidArgumentError("TLS is for TCP: use a tls:// or tcp:// URL")
            try:
                context = ssl.create_default_context(
                    cafile=None if ca_file is None else str(ca_file)
                )
                if cert_file is not None:
                    context.load_cert_chain(
                        str(cert_file), None if key_file is None else str(key_file)
                    )
            except (OSError, ssl.SSLError) as exc:
                raise InvalidArgumentError(f"cannot set up TLS: {exc}") from exc
        return cls(url, token, context)

    def hello(self, database: str) -> dict[str, Any]:
        """The ``hello`` request that opens a connection to ``database``."""
        message: dict[str, Any] = {"op": "hello", "database": database}
        if self.token is not None:
            message["token"] = self.token
        return message

    def _address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if not parts.hostname or parts.port is None:
            raise InvalidArgumentError(f"bad server URL {self.url!r}: use tcp://HOST:PORT")
        return parts.hostname, parts.port

    def open_socket(self, timeout: float | None) -> socket.socket:
        """A connected (and, with TLS, handshaken) blocking socket."""
        parts = urlsplit(self.url)
        try:
            if parts.scheme == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(parts.path)
                return sock
            host, port = self._address()
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
                except BaseException:
                    sock.close()
                    raise
            return sock
        except OSError as exc:  # ssl.SSLError included
            raise ConnectionLostError(f"cannot connect to {self.url}: {exc}") from exc

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An asyncio connection (with TLS when configured)."""
        parts = urlsplit(self.url)
        try:
            if parts.scheme == "unix":
                return await asyncio.open_unix_connection(parts.path)
            host, port = self._address()
            return await asyncio.open_connection(host, port, ssl=self.ssl_context)
        except OSError as exc:
            raise ConnectionLostError(f"cannot connect to {self.url}: {exc}") from exc
