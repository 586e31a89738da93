"""Where a server is and how to reach it: URL, TLS and the token to present.

URLs: ``tcp://HOST:PORT``, ``tls://HOST:PORT`` (TCP with TLS) and ``unix:///PATH``.
A ``tcp://`` or ``tls://`` URL may list several servers, as libpq does:
``tcp://h1:7400,h2:7400,h3:7400`` (each item may repeat the scheme,
``tcp://h1:7400,tcp://h2:7400``, but all must use the same one); :func:`split_hosts`
reads such a list and :mod:`kilndb.client.hosts` decides which of them to talk to. A
``unix://`` URL names one socket, whatever its path contains.
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

__all__ = ["Endpoint", "split_hosts"]

_FORMS = "use tcp://HOST:PORT[,HOST:PORT…], tls://HOST:PORT[,HOST:PORT…] or unix:///PATH"


def split_hosts(url: str) -> tuple[str, ...]:
    """The server URLs of ``url``: one for a single server, several for a list
    (``tcp://h1:1,h2:2`` → ``("tcp://h1:1", "tcp://h2:2")``), in the order given.

    Raises InvalidArgumentError for an unknown scheme, an empty item or host, a missing
    or bad port, schemes mixed in one list, or the same server listed twice.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("tcp", "tls", "unix"):
        raise InvalidArgumentError(f"bad server URL {url!r}: {_FORMS}")
    if scheme == "unix":
        if not rest:
            raise InvalidArgumentError(f"bad server URL {url!r}: unix:///PATH needs a path")
        return (url,)
    hosts: list[str] = []
    for number, item in enumerate(rest.split(","), 1):
        where = f"server {number} of {url!r}" if "," in rest else f"server URL {url!r}"
        item_scheme, sep, address = item.partition("://")
        if not sep:
            item_scheme, address = scheme, item
        elif item_scheme != scheme:
            raise InvalidArgumentError(
                f"bad {where}: a list uses one scheme ({scheme}://), not {item_scheme}://"
            )
        hosts.append(f"{scheme}://{_check_address(address, where)}")
    if len(set(hosts)) != len(hosts):
        raise InvalidArgumentError(f"bad server URL {url!r}: a server is listed twice")
    return tuple(hosts)


def _check_address(address: str, where: str) -> str:
    """``HOST:PORT`` (``[V6]:PORT``) as given; InvalidArgumentError names what is wrong."""
    if not address:
        raise InvalidArgumentError(f"bad {where}: empty (use HOST:PORT)")
    host, colon, port = address.rpartition(":")
    if not colon:
        raise InvalidArgumentError(f"bad {where}: {address!r} has no port (use HOST:PORT)")
    if not host or host == "[]":
        raise InvalidArgumentError(f"bad {where}: {address!r} has no host (use HOST:PORT)")
    if "/" in address or "?" in address or "@" in address or "#" in address:
        raise InvalidArgumentError(f"bad {where}: {address!r} is not HOST:PORT")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"bad {where}: port {port!r} is not a number from 1 to 65535")
    return address


@dataclass(frozen=True)
class Endpoint:
    """A server address with its TLS context and token.

    ``url`` is one server; ``hosts`` every server the URL listed (``url`` first), for a
    client that may move between them (:meth:`at` reaches another with the same token
    and TLS).
    """

    url: str
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.hosts:
            object.__setattr__(self, "hosts", (self.url,))

    @property
    def several(self) -> bool:
        """Whether the URL listed more than one server."""
        return len(self.hosts) > 1

    def at(self, url: str) -> Endpoint:
        """Server ``url`` (one of the list, or a leader a server named), with this
        endpoint's token, TLS and list (a connection to it that breaks may move on to
        another server of the list; ``Endpoint(url, token, ssl_context)`` would not)."""
        return Endpoint(url, self.token, self.ssl_context, self.hosts)

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
        hosts = split_hosts(url)
        scheme = urlsplit(hosts[0]).scheme
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
        return cls(hosts[0], token, context, hosts)

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

    async def open_stream(
        self, timeout: float | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An asyncio connection (with TLS when configured), made within ``timeout``
        seconds (None: as long as the system takes), as :meth:`open_socket` does."""
        parts = urlsplit(self.url)
        try:
            async with asyncio.timeout(timeout):
                if parts.scheme == "unix":
                    return await asyncio.open_unix_connection(parts.path)
                host, port = self._address()
                return await asyncio.open_connection(host, port, ssl=self.ssl_context)
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"cannot connect to {self.url}: no answer within {timeout:g} s"
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(f"cannot connect to {self.url}: {exc}") from exc
