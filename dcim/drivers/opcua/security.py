"""Certificates and trust lists for Basic256Sha256.

OPC UA application certificates are X.509 with the application URI in subjectAltName (Part 6, 6.2.2): a peer
checks that URI against the ApplicationDescription it is sent. A trust list is a file or a directory of
certificates, PEM or DER; a peer is trusted when its certificate is in the list, or was issued by one that is.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dcim.drivers.errors import AuthError

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


class UntrustedCertificate(AuthError):
    """A peer's certificate is not in the trust list."""


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    certificate: Path
    private_key: Path
    application_uri: str


def make_certificate(
    certificate: Path,
    private_key: Path,
    *,
    application_uri: str,
    hostname: str,
    common_name: str = "dcim",
    organization: str = "dcim",
    days: int = 825,
    server: bool = False,
    key_size: int = 2048,
) -> CertificateFiles:
    """Write a self-signed application certificate (DER) and its RSA key (PEM, mode 0600)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
    ])
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        alt_names.append(x509.DNSName(hostname))
    now = datetime.datetime.now(datetime.UTC)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack for clocks that disagree by a few minutes.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate.parent.mkdir(parents=True, exist_ok=True)
    private_key.parent.mkdir(parents=True, exist_ok=True)
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    private_key.touch(mode=0o600)
    private_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return CertificateFiles(certificate, private_key, application_uri)


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a file (PEM may hold several) or a directory's certificate files."""
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def first_certificate(der: bytes) -> x509.Certificate:
    """The first certificate of a DER chain (servers may send theirs followed by their CAs')."""
    if len(der) < 2 or der[0] != 0x30:
        raise ValueError("not a DER certificate")
    size = der[1]
    if size & 0x80:
        count = size & 0x7F
        length = 2 + count + int.from_bytes(der[2 : 2 + count], "big")
    else:
        length = 2 + size
    return x509.load_der_x509_certificate(der[:length])


def load_trust_list(location: str | Path) -> list[x509.Certificate]:
    path = Path(location)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in CERT_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        raise AuthError(f"trust list {path} does not exist")
    certs: list[x509.Certificate] = []
    for file in files:
        try:
            certs += load_certificates(file)
        except (OSError, ValueError) as err:
            raise AuthError(f"trust list {file}: not a certificate ({err})") from err
    return certs


def describe(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"CN={cn}, SHA-1 thumbprint {thumbprint(cert)}"


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def is_trusted(cert: x509.Certificate, trusted: list[x509.Certificate]) -> bool:
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return False
    for anchor in trusted:
        if anchor == cert:
            return True
        if anchor.subject == cert.issuer:
            try:
                cert.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
    return False


def check_trusted(cert: x509.Certificate, location: str | Path, role: str = "server") -> None:
    """Raise UntrustedCertificate, saying what to do about it, unless `cert` is trusted."""
    if not is_trusted(cert, load_trust_list(location)):
        raise UntrustedCertificate(
            f"the {role} certificate ({describe(cert)}) is not in the trust list {location}: "
            f"if this {role} is genuine, copy its certificate there"
        )


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
