"""Certificates made in the test: the development PKI of services/cli/dev_certs.py, as TlsFiles."""

from __future__ import annotations

import pathlib

from services.cli.dev_certs import Authority, make_authority
from services.cli.dev_certs import issue as issue_files
from services.common.tls import TlsFiles

__all__ = ["Authority", "issue", "make_authority"]


def issue(authority: Authority, directory: pathlib.Path, name: str, *, dns_names: tuple[str, ...] = ()) -> TlsFiles:
    """A certificate for servers and clients alike (localhost, 127.0.0.1, alise-internal, name)."""
    files = issue_files(authority, directory, name, dns_names=dns_names)
    return TlsFiles(files.cert_path, files.key_path, files.ca_path)
