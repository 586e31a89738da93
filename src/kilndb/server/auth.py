"""Authentication (JWT) and authorization (scopes) for every transport of a server.

A server started with a secret (HS256) or a public key (RS256 or ES256, PEM) requires a
token on every connection: ``hello {token}`` on TCP and Unix sockets, ``Authorization:
Bearer`` over HTTP and SSE, the header or a first ``hello`` message on WebSocket. A
token must be signed with the configured algorithm, carry ``exp`` and, if it has
``nbf``, be valid already; its ``scope`` claim (a space-separated string, or a list)
grants:

==========================  ==============================================
``kiln::*``                 everything
``kiln::{database}``        reading and writing that database
``kiln::{database}:read``   reading that database
``kiln::admin``             server operations (status, metrics, removal)
``streamkit::*``            reading and writing every database
``streamkit::{store}``      reading and writing that database
==========================  ==============================================

The ``streamkit::`` scopes are streamkit's, honoured so that its tokens keep working: a
streamkit store is a database (a store UUID is a valid name), and its scope grants the
whole store API — produce, consume, leases, status subscriptions — which is reading and
writing that database, as ``kiln::{database}`` grants. They never grant ``kiln::admin``:
streamkit's own node management is not reachable over its transport either. A streamkit
scope names a store only, so ``streamkit::admin`` is the database called ``admin``. Any
other form (``streamkit::``, ``streamkit::{store}:read``, ``streamkit:*``) grants
nothing, like every scope KilnDB does not know.

Refusals are :class:`~kilndb.AuthenticationError` (``unauthenticated``: no token, a bad
one) or :class:`~kilndb.PermissionDeniedError` (``permission_denied``: a good token that
does not grant the operation). Their messages say what is wrong with the token or which
scope is missing, never anything about the data. Each is logged (without the token).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kilndb.errors import AuthenticationError, InvalidArgumentError, PermissionDeniedError
from kilndb.protocol.ops import Action, op_of

__all__ = [
    "ANONYMOUS",
    "AuthConfig",
    "Authenticator",
    "Principal",
    "action_of",
    "create_token",
]

log = logging.getLogger("kilndb.auth")

#: Shortest HS256 secret accepted (RFC 7518: at least the hash size).
MIN_SECRET_BYTES = 32

#: streamkit's scopes: ``streamkit::*`` (every store) and ``streamkit::{store}``.
STREAMKIT_PREFIX = "streamkit::"
STREAMKIT_ALL = "streamkit::*"


def action_of(op: str) -> Action:
    """What an op needs (``read``, ``write``, ``admin`` or nothing), from the op table."""
    return op_of(op).action


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for, and what it may do."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def allows(self, action: Action, database: str | None) -> bool:
        scopes = self.scopes
        if action == "none" or "kiln::*" in scopes:
            return True
        if action == "admin":
            return "kiln::admin" in scopes
        if database is None:
            return False
        if STREAMKIT_ALL in scopes or f"{STREAMKIT_PREFIX}{database}" in scopes:
            return True
        if database == "admin":
            # ``kiln::admin`` names server administration, not a database called admin:
            # that one is reachable with ``kiln::*`` (or a streamkit scope) only.
            return False
        if f"kiln::{database}" in scopes:
            return True
        return action == "read" and f"kiln::{database}:read" in scopes

    @property
    def speaks_streamkit(self) -> bool:
        """Whether the token carries streamkit's scopes (refusals then name them too)."""
        return any(scope.startswith(STREAMKIT_PREFIX) for scope in self.scopes)

    def check(self, op: str, database: str | None) -> None:
        """Raise PermissionDeniedError unless the token grants ``op``: on ``database``
        for a database-scoped op, on the server for an admin one (the op table says)."""
        declared = op_of(op)
        action = declared.action
        if declared.scope != "database":
            database = None
        if not self.allows(action, database):
            needed = "kiln::admin" if action == "admin" else f"kiln::{database}"
            if action == "read":
                needed += f" or kiln::{database}:read"
            if action != "admin" and self.speaks_streamkit:
                needed += f" or {STREAMKIT_PREFIX}{database}"
            log.warning(
                "permission denied: %s needs %s for %s", self.subject or "a token", needed, op
            )
            raise PermissionDeniedError(f"{op} needs the scope {needed}")


#: The principal of a server without authentication: allowed everything.
ANONYMOUS = Principal("", frozenset({"kiln::*"}))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How a server checks tokens: a shared secret (HS256) or a public key (PEM)."""

    secret: str | None = None
    public_key: str | None = None
    #: Seconds of clock skew tolerated on ``exp`` and ``nbf``.
    leeway: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.secret is not None or self.public_key is not None

    @classmethod
    def from_files(cls, secret: str | None, public_key_file: Path | None) -> AuthConfig:
        key = None if public_key_file is None else public_key_file.read_text()
        return cls(secret=secret, public_key=key)


class Authenticator:
    """Verifies tokens against an :class:`AuthConfig`."""

    def __init__(self, config: AuthConfig) -> None:
        if config.secret is not None and config.public_key is not None:
            raise InvalidArgumentError("give a secret or a public key, not both")
        if config.secret is not None and len(config.secret.encode()) < MIN_SECRET_BYTES:
            raise InvalidArgumentError(
                f"the auth secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518)"
            )
        self.config = config
        self._key: Any = config.secret
        self._algorithms = ["HS256"]
        if config.public_key is not None:
            try:
                public = load_pem_public_key(config.public_key.encode())
            except ValueError as exc:
                raise InvalidArgumentError(f"the auth public key is not PEM: {exc}") from exc
            if isinstance(public, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(public, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise InvalidArgumentError("the auth public key must be RSA or EC (P-256)")
            self._key = public

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def verify(self, token: object) -> Principal:
        """The principal of a valid token; AuthenticationError saying what is wrong."""
        if not self.enabled:
            return ANONYMOUS
        if not isinstance(token, str) or not token:
            raise self._refuse("a token is required (hello {token} or Authorization: Bearer)")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                leeway=self.config.leeway,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise self._refuse("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise self._refuse("the token is not valid yet (nbf)") from None
        except jwt.InvalidAlgorithmError:
            allowed = ", ".join(self._algorithms)
            raise self._refuse(f"the token's algorithm is not allowed (only {allowed})") from None
        except jwt.InvalidSignatureError:
            raise self._refuse("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise self._refuse(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise self._refuse(f"the token is invalid: {exc}") from None
        return Principal(str(claims.get("sub", "")), _scopes(claims))

    @staticmethod
    def _refuse(reason: str) -> AuthenticationError:
        log.warning("authentication refused: %s", reason)
        return AuthenticationError(reason)


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scopes", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


def create_token(
    secret: str,
    scopes: list[str],
    ttl: float = 3600.0,
    subject: str = "kiln",
    algorithm: str = "HS256",
) -> str:
    """A signed token for development and tests (``kiln token create``)."""
    now = int(time.time())
    claims = {"sub": subject, "scope": " ".join(scopes), "iat": now, "exp": now + int(ttl)}
    return jwt.encode(claims, secret, algorithm=algorithm)
