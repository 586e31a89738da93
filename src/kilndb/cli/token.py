"""``kiln token create``: mint a JWT for a server started with ``--auth-secret``."""

from __future__ import annotations

import click

from kilndb.server.auth import create_token

__all__ = ["token"]


@click.group()
def token() -> None:
    """Tokens for servers that require authentication."""


@token.command()
@click.option(
    "--secret",
    required=True,
    envvar="KILN_AUTH_SECRET",
    help="The server's --auth-secret (HS256).",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="kiln::* | kiln::DATABASE | kiln::DATABASE:read | kiln::admin (repeatable).",
)
@click.option(
    "--ttl",
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    help="Seconds until it expires.",
)
@click.option("--subject", default="kiln", show_default=True, help="Who it speaks for (sub).")
def create(secret: str, scopes: tuple[str, ...], ttl: float, subject: str) -> None:
    """Print a signed token (for development; use your identity provider in production)."""
    click.echo(create_token(secret, list(scopes), ttl=ttl, subject=subject))
