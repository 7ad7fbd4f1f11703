"""cluster.client TLS: the client authenticates the node with the network CA (server-auth TLS),
honours a server name override, and refuses a node whose certificate another CA issued."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.client import Client, ClientError, TlsConfig, TlsConfigError

from .fake_ledger import CHAIN, FakeLedger, start_fake


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], dns: str, ip: bool
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(dns)]
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca[0], hashes.SHA256())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca("clearline-test-ca")
    other = make_ca("someone-else")
    paths = {"ca": tmp_path / "ca.pem", "other_ca": tmp_path / "other.pem"}
    paths["ca"].write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    paths["other_ca"].write_bytes(other[1].public_bytes(serialization.Encoding.PEM))
    for label, ip in (("ip", True), ("named", False)):
        key, cert = make_leaf(ca, "node0.clearline", ip)
        (tmp_path / f"{label}.key").write_bytes(key)
        (tmp_path / f"{label}.crt").write_bytes(cert)
        paths[f"{label}_key"], paths[f"{label}_crt"] = tmp_path / f"{label}.key", tmp_path / f"{label}.crt"
    return paths


async def serve_tls(pki: dict[str, Path], label: str) -> tuple[grpc.aio.Server, str]:
    creds = grpc.ssl_server_credentials(
        [(pki[f"{label}_key"].read_bytes(), pki[f"{label}_crt"].read_bytes())]
    )
    return await start_fake(FakeLedger(), creds)


async def test_client_connects_over_tls_with_the_network_ca(pki: dict[str, Path]) -> None:
    server, target = await serve_tls(pki, "ip")
    try:
        async with await Client.connect(target, tls=TlsConfig(pki["ca"]), timeout_s=5) as client:
            assert client.chain_id == CHAIN
    finally:
        await server.stop(None)


async def test_server_name_override_for_a_certificate_issued_to_a_node_name(pki: dict[str, Path]) -> None:
    server, target = await serve_tls(pki, "named")
    try:
        with pytest.raises(ClientError) as info:
            await Client.connect(target, tls=TlsConfig(pki["ca"]), timeout_s=2)
        assert info.value.code is grpc.StatusCode.UNAVAILABLE
        tls = TlsConfig(pki["ca"], server_name_override="node0.clearline")
        async with await Client.connect(target, tls=tls, timeout_s=5) as client:
            assert (await client.status()).chain_id == CHAIN
    finally:
        await server.stop(None)


async def test_node_certified_by_another_ca_is_refused(pki: dict[str, Path]) -> None:
    server, target = await serve_tls(pki, "ip")
    try:
        with pytest.raises(ClientError) as info:
            await Client.connect(target, tls=TlsConfig(pki["other_ca"]), timeout_s=2)
        assert info.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


def test_inconsistent_or_missing_tls_files_are_named(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(TlsConfigError) as info:
        TlsConfig(pki["ca"], client_cert_path=pki["ip_crt"]).credentials()
    assert info.value.setting == "client_key_path"
    with pytest.raises(TlsConfigError) as info:
        TlsConfig(tmp_path / "missing.pem").credentials()
    assert info.value.setting == "ca_cert_path" and "does not exist" in info.value.problem
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsConfigError) as info:
        TlsConfig(tmp_path / "junk.pem").credentials()
    assert "not a PEM file" in info.value.problem
    creds = TlsConfig(pki["ca"], client_cert_path=pki["ip_crt"], client_key_path=pki["ip_key"]).credentials()
    assert isinstance(creds, grpc.ChannelCredentials)


async def test_mutual_tls_presents_the_client_certificate(pki: dict[str, Path]) -> None:
    creds = grpc.ssl_server_credentials(
        [(pki["ip_key"].read_bytes(), pki["ip_crt"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    server, target = await start_fake(FakeLedger(), creds)
    try:
        with pytest.raises(ClientError) as info:
            await Client.connect(target, tls=TlsConfig(pki["ca"]), timeout_s=2)
        assert info.value.code is grpc.StatusCode.UNAVAILABLE
        tls = TlsConfig(pki["ca"], client_cert_path=pki["named_crt"], client_key_path=pki["named_key"])
        async with await Client.connect(target, tls=tls, timeout_s=5) as client:
            assert client.chain_id == CHAIN
    finally:
        await server.stop(None)
