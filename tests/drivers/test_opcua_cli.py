"""`dcim opcua-cert` makes a certificate OPC UA accepts: application URI in subjectAltName, client usage."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from dcim.drivers.opcua.cli import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dcim")
    register(parser.add_subparsers())
    args = parser.parse_args(["opcua-cert", *argv])
    code: int = args.func(args)
    return code


def test_makes_a_client_certificate_with_the_application_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--hostname", "facility-01", "--out-dir", str(tmp_path)]) == 0
    cert = x509.load_der_x509_certificate((tmp_path / "client.der").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:dcim:client:facility-01"]
    assert san.get_values_for_type(x509.DNSName) == ["facility-01"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and key_usage.key_encipherment and key_usage.data_encipherment
    key_path = tmp_path / "client.key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    out = capsys.readouterr().out
    assert "application_uri: urn:dcim:client:facility-01" in out


def test_paths_uri_and_ip_address(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "a" / "me.der", tmp_path / "b" / "me.pem"
    assert run(["--hostname", "10.0.4.2", "--application-uri", "urn:site:dcim", "--cert", str(cert_path),
                "--key", str(key_path)]) == 0
    cert = x509.load_der_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:site:dcim"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.4.2"]
    assert key_path.is_file()


def test_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--out-dir", str(tmp_path)]) == 0
    before = (tmp_path / "client.der").read_bytes()
    assert run(["--out-dir", str(tmp_path)]) == 1
    assert "already exist" in capsys.readouterr().err
    assert (tmp_path / "client.der").read_bytes() == before
    assert run(["--out-dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "client.der").read_bytes() != before
