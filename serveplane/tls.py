"""TLS for both ingresses: certificate files, read and re-read on change.

``ssl_certfile`` and ``ssl_keyfile`` (PEM) make an ingress serve TLS only (TLS 1.2 or later);
``ssl_ca_certs`` (PEM) adds mutual TLS: every client must present a certificate that chains
to one of those CAs, or its handshake fails. The files are re-read when one of them changes
(its size, modification time or inode), checked at most once a second, so a certificate is
rotated without a restart: connections opened after the change use the new files, open
ones keep theirs. A change that does not load (a half-written file, a key that does not
match) is logged and the previous certificate keeps serving.

What stays weaker: on the HTTP proxy a CA removed from ``ssl_ca_certs`` stays trusted until
the proxy restarts (OpenSSL adds CAs to a context's store, never removes them); the gRPC
proxy takes the new CA list as it is.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from serveplane.exceptions import InvalidConfigError

logger = logging.getLogger("serveplane.tls")

CHECK_EVERY_S = 1.0


@dataclass(frozen=True)
class TLSFiles:
    certfile: str
    keyfile: str
    ca_certs: str | None = None

    @classmethod
    def of(cls, options: Any) -> TLSFiles | None:
        """The TLS files of an ``HTTPOptions`` / ``GRPCOptions``, or None for plain text."""
        if not options.ssl_certfile:
            return None
        return cls(options.ssl_certfile, options.ssl_keyfile, options.ssl_ca_certs)

    @property
    def mutual(self) -> bool:
        return self.ca_certs is not None

    def paths(self) -> tuple[str, ...]:
        return (self.certfile, self.keyfile) + ((self.ca_certs,) if self.ca_certs else ())

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when a file is rewritten or replaced."""
        out = []
        for path in self.paths():
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1, -1))
        return tuple(out)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, key, CA certificates) as bytes; ``InvalidConfigError`` naming the
        file that cannot be read."""
        def load(field: str, path: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise InvalidConfigError(
                    f"{field} {path!r} cannot be read ({exc.strerror}); give a PEM file this "
                    "proxy's process can read (on every node it runs on)") from None

        return (load("ssl_certfile", self.certfile), load("ssl_keyfile", self.keyfile),
                load("ssl_ca_certs", self.ca_certs) if self.ca_certs else None)


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A new server context holding ``files``; ``InvalidConfigError`` when they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, files)
    return context


def _load(context: ssl.SSLContext, files: TLSFiles) -> None:
    files.read()  # names an unreadable file before OpenSSL's vaguer errors
    try:
        context.load_cert_chain(files.certfile, files.keyfile)
        if files.ca_certs:
            context.load_verify_locations(cafile=files.ca_certs)
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as exc:
        raise InvalidConfigError(
            f"TLS files {', '.join(repr(p) for p in files.paths())} do not load ({exc.reason or exc}); "
            "ssl_certfile must hold the certificate (chain) in PEM, ssl_keyfile its private key, "
            "ssl_ca_certs the client CAs") from None


class ReloadingContext:
    """A server ``SSLContext`` whose certificate is re-read, in place, when its files change
    (``maybe_reload``; new handshakes use the new one)."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.context = server_context(files)
        self._stamp = files.stamp()
        self._checked = time.monotonic()
        self.reloads = 0

    def __repr__(self) -> str:
        return f"<ReloadingContext {self.files.certfile!r} [reloads: {self.reloads}]>"

    def maybe_reload(self) -> bool:
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            _load(self.context, self.files)
        except InvalidConfigError as exc:
            logger.error("TLS files changed but do not load; the previous certificate keeps "
                         "serving: %s", exc)
            return False
        self.reloads += 1
        logger.info("TLS files re-read: %s", ", ".join(self.files.paths()))
        return True


class GRPCCertificates:
    """gRPC's ``dynamic_ssl_server_credentials`` over ``files``: the fetcher gRPC calls on a
    handshake returns a new configuration once the files changed (checked at most once a
    second), else None (keep the current one)."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        self._checked = time.monotonic()
        self.reloads = 0
        self.initial = self._configuration()

    def _configuration(self) -> Any:
        import grpc

        cert, key, ca = self.files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> Any:
        import grpc

        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=self.files.mutual)

    def fetch(self) -> Any:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < CHECK_EVERY_S:
                return None
            self._checked = now
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                configuration = self._configuration()
            except InvalidConfigError as exc:
                logger.error("TLS files changed but cannot be read; the previous certificate "
                             "keeps serving: %s", exc)
                return None
            self.reloads += 1
            logger.info("TLS files re-read: %s", ", ".join(self.files.paths()))
            return configuration
