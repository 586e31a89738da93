"""TLS for TCP and HTTP, and mutual TLS, with certificates made for each test."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

import pytest
import trustme

import kilndb
from kilndb.server import Server


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _server_files(ca: trustme.CA, root: Path) -> tuple[Path, Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, authority = root / "server.pem", root / "server.key", root / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(authority))
    return chain, key, authority


def test_tls_for_the_wire_protocol_and_http(ca: trustme.CA, tmp_path: Path) -> None:
    chain, key, authority = _server_files(ca, tmp_path)
    with Server(data=tmp_path / "data", port=0, http_port=0, tls_cert=chain, tls_key=key) as server:
        assert server.url.startswith("tls://") and server.http_url.startswith("https://")
        with kilndb.connect(server.url, ca_file=authority) as db:
            db.store("s").write("k", "over tls")
        plain_url = server.url.replace("tls://", "tcp://")
        with kilndb.connect(plain_url, tls=True, ca_file=authority) as db:
            fact = db.store("s").read("k")
            assert fact is not None and fact.value == "over tls"
        with pytest.raises(kilndb.ConnectionLostError, match="certificate"):
            kilndb.connect(server.url)  # the system CAs do not know this one
        with pytest.raises(kilndb.KilnError):
            kilndb.connect(plain_url, timeout=5)  # plaintext to a TLS port
        context = ssl.create_default_context(cafile=str(authority))
        with urllib.request.urlopen(server.http_url + "/v1/health", context=context) as reply:
            assert reply.status == 200


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    ca: trustme.CA, tmp_path: Path
) -> None:
    chain, key, authority = _server_files(ca, tmp_path)
    client = ca.issue_cert("client@example.test")
    client_pem = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    stranger = trustme.CA().issue_cert("stranger@example.test")
    stranger_pem = tmp_path / "stranger.pem"
    stranger.private_key_and_cert_chain_pem.write_to_path(str(stranger_pem))
    with Server(
        data=tmp_path / "data",
        port=0,
        tls_cert=chain,
        tls_key=key,
        tls_client_ca=authority,
    ) as server:
        with kilndb.connect(server.url, ca_file=authority, cert_file=client_pem) as db:
            db.store("s").write("k", 1)
        for cert_file in (None, stranger_pem):
            with pytest.raises(kilndb.KilnError):
                db = kilndb.connect(server.url, ca_file=authority, cert_file=cert_file, timeout=5)
                db.store("s").read("k")  # TLS 1.3 may report the refusal on first use


def test_bad_tls_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match="certificate"):
        Server(data=tmp_path / "data", port=0, tls_key=tmp_path / "key.pem")
    missing = tmp_path / "missing.pem"
    with pytest.raises(kilndb.InvalidArgumentError, match="TLS"):
        Server(data=tmp_path / "data", port=0, tls_cert=missing)
    with pytest.raises(kilndb.InvalidArgumentError, match="TLS"):
        kilndb.connect("unix:///tmp/x.sock", tls=True)
    with pytest.raises(kilndb.InvalidArgumentError, match="TLS"):
        kilndb.connect("tls://127.0.0.1:1", ca_file=missing)
