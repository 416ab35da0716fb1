"""Helpers for the deployment-artifact tests: the real CLI, throwaway certificates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def nimsforest(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m nimsforest ARGS` as users do; NATS_* and REGISTRY_* come only from `env`."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("NATS_", "REGISTRY_", "NIMSFOREST_", "JETSTREAM_"))}
    return subprocess.run([sys.executable, "-m", "nimsforest", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, input=input, check=False)


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m nimsforest.cli.verify ARGS` (the setup script's last step)."""
    return subprocess.run([sys.executable, "-m", "nimsforest.cli.verify", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def one_sentence(stderr: str) -> str:
    """The single error line a failing command prints; fails the test if there is more."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].endswith("."), lines[0]
    return lines[0]


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


@pytest.fixture
def self_signed(tmp_path: Path) -> Cert:
    """A throwaway self-signed certificate for 127.0.0.1/127.0.0.2/localhost (its own CA)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        _with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is available to make a certificate")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost",
             "-addext", "extendedKeyUsage=serverAuth,clientAuth"],
            check=True, capture_output=True,
        )
    return Cert(cert, key)


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
            x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
