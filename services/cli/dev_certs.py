"""`python -m services.cli.dev_certs --out DIR`: a development PKI for TLS and mutual TLS between services.

    DIR/ca.pem                     the CA every service trusts (--tls-ca)
    DIR/<service>.pem, .key        gateway, engine, predictor, memory: certificate and key
    DIR/api_keys.txt               one random API key (--api-key-file)

Every certificate is valid for server and client use and names its service, `alise-internal`
(what a gateway given `--tls-peer-name alise-internal` checks when it dials replicas by IP),
`localhost` and 127.0.0.1 (container healthchecks). EC P-256 keys, one year. For production, issue
the same files from your own CA (cert-manager, Vault...). Key files are written mode 0644 so the
containers' non-root user can read bind-mounted secrets: development only.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import pathlib
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_NAMES = ("gateway", "engine", "predictor", "memory")
INTERNAL_NAME = "alise-internal"  # SAN every service certificate carries (see --tls-peer-name)
VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Authority:
    """A CA: its key, its certificate, and the PEM file of the certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: pathlib.Path


@dataclass(frozen=True)
class IssuedFiles:
    """PEM files of one issued certificate."""

    cert_path: str  # certificate
    key_path: str  # its private key
    ca_path: str  # the CA that signed it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def make_authority(directory: pathlib.Path, name: str = "ca") -> Authority:
    """A self-signed CA; its certificate is written to DIR/<name>.pem (the key stays in memory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(f"alise {name}", _name(f"alise {name}"), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, cert_path)


def issue(authority: Authority, directory: pathlib.Path, name: str, *, dns_names: tuple[str, ...] = ()) -> IssuedFiles:
    """A server-and-client certificate for `name` (plus localhost, 127.0.0.1, INTERNAL_NAME)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = [x509.DNSName(n) for n in (name, INTERNAL_NAME, "localhost", *dns_names)]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cert = (
        _builder(name, authority.cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(key_pem)
    key_path.chmod(0o644)
    return IssuedFiles(str(cert_path), str(key_path), str(authority.cert_path))


def write_dev_pki(directory: pathlib.Path) -> dict[str, IssuedFiles]:
    """The CA, one certificate per service and an API key file, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = make_authority(directory)
    issued = {name: issue(authority, directory, name) for name in SERVICE_NAMES}
    (directory / "api_keys.txt").write_text(f"sk-alise-{secrets.token_urlsafe(24)}\n")
    return issued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.cli.dev_certs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("deploy/secrets"))
    args = parser.parse_args(argv)
    write_dev_pki(args.out)
    print(f"wrote ca.pem, {', '.join(f'{n}.pem/.key' for n in SERVICE_NAMES)} and api_keys.txt to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
