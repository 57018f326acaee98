"""Transport security for the gRPC port: TLS, mTLS, and certificates rotated without a restart.

The server's credentials are gRPC's *dynamic* SSL credentials: gRPC asks
:meth:`ServerTls.fetch` for the certificate configuration at every new
connection's handshake. ``fetch`` re-reads the files when one of them changed
on disk (a new modification time or size; cert-manager and Kubernetes
Secrets rotate by replacing the files) or after :meth:`reload` (SIGHUP), and
otherwise keeps the configuration in use. Established connections, and the
calls on them, keep the certificate they were set up with: nothing is dropped.
A rotation that leaves unreadable or mismatched files is reported and the
previous certificate kept.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import threading

import grpc

from nba_service.settings import SettingsError

__all__ = ["ServerTls", "TlsError", "is_loopback"]

log = logging.getLogger(__name__)


class TlsError(SettingsError):
    """The TLS files cannot be used; the message names the file."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"{path}: the {what} is not PEM (no -----BEGIN line)")
    return data


def _check_pair(cert: str, key: str) -> None:
    """Refuse a certificate and key that do not belong together (gRPC would fail every handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsError(f"{cert}, {key}: the certificate and key do not match or cannot be used: {exc}") from None


class ServerTls:
    """The server certificate and key, and with ``client_ca`` the CA that client certificates must chain to."""

    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._stamps = self._file_stamps()
        self._config = self._load()
        self._force = False
        self.rotations = 0
        """Configurations loaded after the first (rotations seen)."""

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def _paths(self) -> list[str]:
        return [p for p in (self.cert, self.key, self.client_ca) if p]

    def _file_stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self._paths():
            try:
                stat = os.stat(path)
                stamps.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = _read(self.cert, "certificate"), _read(self.key, "private key")
        _check_pair(self.cert, self.key)
        root = _read(self.client_ca, "client CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=root)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``: client certificates required and verified when mutual."""
        return grpc.dynamic_ssl_server_credentials(self._config, self.fetch, require_client_authentication=self.mutual)

    def reload(self) -> None:
        """Re-read the files at the next handshake even if they look unchanged (SIGHUP)."""
        self._force = True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake: a new configuration when the files changed, else None."""
        stamps = self._file_stamps()
        if stamps == self._stamps and not self._force:
            return None
        with self._lock:
            if stamps == self._stamps and not self._force:
                return None
            self._stamps, self._force = stamps, False
            try:
                config = self._load()
            except TlsError as exc:
                log.error("TLS files changed but cannot be used, the previous certificate stays in use: %s", exc)
                return None
            self._config = config
            self.rotations += 1
            log.info("TLS certificate re-read from %s", self.cert)
            return config


def is_loopback(host: str) -> bool:
    """True when ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            )
        except OSError:
            return False
