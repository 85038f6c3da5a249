"""`dcim opcua-cert`: a client certificate and key for a new installation.

    dcim opcua-cert --hostname facility-01 --out-dir /etc/dcim/opcua
    -> /etc/dcim/opcua/client.der (give it to each chiller's trust list) and client.key.pem (mode 0600)

The application URI goes into the certificate's subjectAltName, as OPC UA requires; the device
configuration's `application_uri` (if given) must be the same.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "opcua-cert", help="make an OPC UA client certificate and key (Basic256Sha256)",
        description="Make a self-signed OPC UA application certificate (DER) and its RSA key (PEM).",
    )
    parser.add_argument("--hostname", default=socket.gethostname(),
                        help="host name (or IP address) of this machine, put in subjectAltName (default: %(default)s)")
    parser.add_argument("--application-uri", default=None,
                        help="application URI (default: urn:dcim:client:<hostname>)")
    parser.add_argument("--out-dir", default=".", help="directory for the files (default: current directory)")
    parser.add_argument("--cert", default=None, help="certificate path (default: <out-dir>/client.der)")
    parser.add_argument("--key", default=None, help="private key path (default: <out-dir>/client.key.pem)")
    parser.add_argument("--common-name", default="dcim", help="subject CN (default: %(default)s)")
    parser.add_argument("--organization", default="dcim", help="subject O (default: %(default)s)")
    parser.add_argument("--days", type=int, default=825, help="validity in days (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(func=cmd_opcua_cert)


def cmd_opcua_cert(args: argparse.Namespace) -> int:
    # Imported here: every `dcim` command registers this one, and cryptography is a tenth of a second to load.
    from dcim.drivers.opcua.security import describe, load_certificates, make_certificate

    out = Path(args.out_dir)
    cert = Path(args.cert) if args.cert else out / "client.der"
    key = Path(args.key) if args.key else out / "client.key.pem"
    uri = args.application_uri or f"urn:dcim:client:{args.hostname}"
    if args.days < 1:
        print("opcua-cert: --days must be at least 1", file=sys.stderr)
        return 2
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not args.force:
        print(f"opcua-cert: {', '.join(existing)} already exist(s); use --force to replace", file=sys.stderr)
        return 1
    try:
        made = make_certificate(cert, key, application_uri=uri, hostname=args.hostname,
                                common_name=args.common_name, organization=args.organization, days=args.days)
    except (OSError, ValueError) as err:
        print(f"opcua-cert: {err}", file=sys.stderr)
        return 1
    print(f"certificate: {made.certificate} ({describe(load_certificates(made.certificate)[0])})")
    print(f"private key: {made.private_key} (keep it secret: mode 0600)")
    print(f"application_uri: {made.application_uri}")
    print("Next: copy the certificate into each chiller's trusted-clients list, and set in the device config:")
    print(f"  certificate: {made.certificate.resolve()}")
    print(f"  private_key: {made.private_key.resolve()}")
    return 0
