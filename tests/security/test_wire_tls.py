"""TLS trust: one source for the worker (requests) and the triggerer (httpx), and a bad ``ca_bundle`` caught at
connection load (issue 25, finding 10).

Before: requests honoured ``REQUESTS_CA_BUNDLE`` and ignored ``SSL_CERT_FILE``, httpx's SSL context the other way
round, so the worker and the triggerer could trust different CAs; a missing ``ca_bundle`` was a raw ``OSError``
on the first request and ``"False"`` was read as a path. A real HTTPS server on 127.0.0.1, its certificate signed
by a CA made for the test, tells which trust each transport used.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.errors import KernelConnectionConfigError, KernelTransportError
from kernel_provider.client.settings import CA_BUNDLE_ENV
from kernel_provider.client.transport import close_loop_resources
from tests.helpers import FAST_RETRY, conn_json
from tests.security.wire_servers import Answer, scripted

KEY = "sk_tls_test_key"


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA (its PEM file) and a certificate for 127.0.0.1 signed by it (cert and key files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wire test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


@pytest.fixture(scope="module")
def tls_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS "Kernel" on 127.0.0.1 whose certificate only the test CA vouches for; yields (url, CA file)."""
    ca_file, cert_file, key_file = _make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    answer = {"id": "a" * 24, "status": "running", "action_name": "echo"}
    with scripted(lambda seen: Answer(200, answer), tls=context) as server:
        yield server.url, ca_file


pytestmark = pytest.mark.usefixtures("no_ca_environment")


def _both_sides(settings: KernelSettings) -> tuple[Any, Any]:
    """The outcome of one GET on the worker's transport and one on the triggerer's: the invocation or the error."""
    client = KernelClient(settings, retry=FAST_RETRY)
    outcomes: list[Any] = []
    try:
        outcomes.append(client.get_invocation("a" * 24).id)
    except KernelTransportError as exc:
        outcomes.append(exc)

    async def run() -> Any:
        try:
            return (await client.aget_invocation("a" * 24)).id
        except KernelTransportError as exc:
            return exc
        finally:
            await close_loop_resources()

    outcomes.append(asyncio.run(run()))
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("variable", CA_BUNDLE_ENV)
def test_worker_and_triggerer_trust_the_same_environment_bundle(
    variable: str, tls_kernel: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_file = tls_kernel
    bundle = str(ca_file)
    if variable == "SSL_CERT_DIR":
        bundle = _hashed_directory(ca_file)
    monkeypatch.setenv(variable, bundle)
    settings = KernelSettings.from_mapping(host=url, password=KEY)
    assert _both_sides(settings) == ("a" * 24, "a" * 24)
    assert settings.verify == bundle  # resolved once, for both


def _hashed_directory(ca_file: Path) -> str:
    """A CA directory as OpenSSL reads it: the certificate under ``<subject hash>.0``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to name a CA directory's entries")
    subject_hash = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(ca_file)], check=True, capture_output=True, text=True
    ).stdout.strip()
    directory = ca_file.parent / "certs"
    directory.mkdir(exist_ok=True)
    shutil.copy(ca_file, directory / f"{subject_hash}.0")
    return str(directory)


def test_without_any_setting_both_verify_against_the_default_bundle_and_refuse(
    tls_kernel: tuple[str, Path],
) -> None:
    url, _ = tls_kernel
    settings = KernelSettings.from_mapping(host=url, password=KEY)
    assert settings.verify is True
    sync, async_ = _both_sides(settings)
    for error in (sync, async_):
        assert isinstance(error, KernelTransportError) and not error.request_sent  # TLS refused before sending
        assert KEY not in str(error)


def test_the_connections_ca_bundle_serves_both(tls_kernel: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca_file = tls_kernel
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file.parent / "not-used.pem"))  # ca_bundle wins, unread
    settings = KernelSettings.from_mapping(host=url, password=KEY, extra={"ca_bundle": str(ca_file)})
    assert _both_sides(settings) == ("a" * 24, "a" * 24)


@pytest.mark.parametrize("ca_bundle", ["False", "false", "0", "true", "no", "/nonexistent/ca.pem"])
def test_a_bad_ca_bundle_is_a_clear_error_at_connection_load(
    ca_bundle: str, kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token, ca_bundle=ca_bundle)
    )
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelHook().get_invocation("a" * 24)
    assert "extra.ca_bundle" in str(raised.value)
    assert kernel_emulator.requests() == []


def test_plain_http_to_a_remote_host_is_refused_unless_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json("http://kernel.internal:8080", KEY))
    ok, message = KernelHook().test_connection()
    assert not ok and "allow_insecure_http" in message and KEY not in message
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json("http://kernel.internal:8080", KEY, allow_insecure_http=True)
    )
    assert KernelHook().settings.base_url == "http://kernel.internal:8080"
