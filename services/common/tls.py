"""TLS for every service: server credentials, client channel credentials, and their flags.

    --tls-cert/--tls-key   this service's certificate chain and private key (PEM); the server
                           serves TLS with them, and its client channels present them (mTLS)
    --tls-ca               CA bundle (PEM) that peers' certificates must chain to; given to an
                           internal service (engine, predictor, memory), its server also requires
                           a client certificate signed by it, and its client channels use mutual
                           TLS (without it, the gateway's channels to its peers stay plaintext)
    --tls-peer-name        the name peers' certificates carry (a SAN), checked instead of the dialed
                           host: replicas are dialed by IP after DNS discovery, so the IP is rarely
                           in the certificate ("" = check the dialed host)

No TLS flag = plaintext, as before. Files are read at start-up; a missing file is a ValueError.
"""

from __future__ import annotations

import argparse
import pathlib
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one service's TLS setup; invalid combinations raise ValueError."""

    cert_path: str  # certificate chain of this service (server cert; client cert toward peers)
    key_path: str  # private key of cert_path
    ca_path: str = ""  # CA bundle peers must chain to; "" = system roots, no client certificates
    peer_name: str = ""  # SAN expected in peers' certificates; "" = the dialed host

    def __post_init__(self) -> None:
        if not self.cert_path or not self.key_path:
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        for flag, path in (("--tls-cert", self.cert_path), ("--tls-key", self.key_path), ("--tls-ca", self.ca_path)):
            if path and not pathlib.Path(path).is_file():
                raise ValueError(f"{flag} {path!r} is not a file")

    @property
    def verifies_peers(self) -> bool:
        """True when a CA is given: peers (clients of a server included) must present its certificates."""
        return bool(self.ca_path)


def _read(path: str) -> bytes | None:
    return pathlib.Path(path).read_bytes() if path else None


def server_credentials(tls: TlsFiles, *, require_client_cert: bool) -> grpc.ServerCredentials:
    """Credentials of a TLS server; with require_client_cert, clients need a certificate of tls.ca_path."""
    if require_client_cert and not tls.ca_path:
        raise ValueError("requiring client certificates needs --tls-ca")
    key_pair = (pathlib.Path(tls.key_path).read_bytes(), pathlib.Path(tls.cert_path).read_bytes())  # both required
    return grpc.ssl_server_credentials(
        [key_pair], root_certificates=_read(tls.ca_path), require_client_auth=require_client_cert
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials of a channel to an internal peer: verify it with tls.ca_path, present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_path),
        private_key=_read(tls.key_path),
        certificate_chain=_read(tls.cert_path),
    )


def channel_options(tls: TlsFiles | None) -> tuple[tuple[str, str], ...]:
    """Extra channel options: the expected peer name when one is configured."""
    if tls is None or not tls.peer_name:
        return ()
    return (("grpc.ssl_target_name_override", tls.peer_name),)


def secure_or_insecure_channel(
    address: str, tls: TlsFiles | None, options: tuple[tuple[str, Any], ...] = ()
) -> grpc.aio.Channel:
    """A grpc.aio channel to an internal peer: mTLS when tls has a CA, plaintext otherwise."""
    if tls is None or not tls.verifies_peers:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=(*options, *channel_options(tls)))


def secure_or_insecure_sync_channel(
    address: str, tls: TlsFiles | None, options: tuple[tuple[str, Any], ...] = ()
) -> grpc.Channel:
    """The same for a synchronous channel (callers on plain threads)."""
    if tls is None or not tls.verifies_peers:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, channel_credentials(tls), options=(*options, *channel_options(tls)))


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key, --tls-ca, --tls-peer-name (see the module docstring)."""
    group = parser.add_argument_group("TLS")
    group.add_argument("--tls-cert", default="", help="PEM certificate chain of this service")
    group.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    group.add_argument("--tls-ca", default="", help="PEM CA bundle peers must chain to (mutual TLS)")
    group.add_argument("--tls-peer-name", default="", help="name (SAN) in peers' certificates")


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """The TlsFiles of parsed flags; None when no TLS flag is given (ValueError for a partial set)."""
    if not (args.tls_cert or args.tls_key or args.tls_ca or args.tls_peer_name):
        return None
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca, args.tls_peer_name)
