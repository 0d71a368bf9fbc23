"""HTTPS for `scoring serve`: a server TLS context whose certificate follows its files without a restart.

Kubernetes updates a mounted Secret by swapping a symlink (`..data`), so both files change at
once. Every TLS handshake passes through the context's SNI callback (called with or without an
SNI name); at most every `RECHECK_S` seconds it stats the two files, and when they changed it
builds and checks a *new* context and hands it to this and later connections. Open connections
keep the certificate they started with. A half-written or mismatched pair is refused (a warning,
the previous certificate stays in use) and retried at the next check, so a bad update can never
take HTTPS down. Start-up, in contrast, fails at once with one line saying what is wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
from pathlib import Path

from scoring_runtime.server.logs import event

log = logging.getLogger("scoring_runtime.server")
RECHECK_S = 2.0


class TlsError(ValueError):
    """The certificate or key cannot be used; the message says which file and why."""


def _fingerprint(cert_file: Path) -> str:
    """SHA-256 of the first certificate in the PEM file (what `openssl x509 -fingerprint -sha256` prints)."""
    try:
        pem = cert_file.read_text(encoding="ascii", errors="replace")
        end = pem.index(ssl.PEM_FOOTER) + len(ssl.PEM_FOOTER)
        der = ssl.PEM_cert_to_DER_cert(pem[pem.index(ssl.PEM_HEADER):end])
    except (OSError, ValueError):
        return "unknown"
    return hashlib.sha256(der).hexdigest()


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the pair; raises TlsError with a message a user can act on."""
    for what, path in (("certificate", cert_file), ("key", key_file)):
        if not path.is_file():
            raise TlsError(f"TLS {what} file {path} does not exist or is not a file "
                           f"(SCORING_TLS_{'CERT' if what == 'certificate' else 'KEY'}_FILE)")
        if not os.access(path, os.R_OK):
            raise TlsError(f"TLS {what} file {path} is not readable by uid {os.getuid()}; mount the Secret with a "
                           "mode (or fsGroup) that lets the server read it")
    for what, path, marker in (("certificate", cert_file, "-----BEGIN CERTIFICATE-----"),
                               ("key", key_file, "PRIVATE KEY-----")):
        try:
            text = path.read_bytes()[:1_000_000].decode("ascii", errors="replace")
        except OSError as e:
            raise TlsError(f"cannot read TLS {what} file {path}: {e.strerror}") from None
        if marker not in text:
            raise TlsError(f"TLS {what} file {path} holds no PEM {what} (no '{marker}' line); "
                           "give the PEM files of a kubernetes.io/tls Secret (tls.crt, tls.key)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file), password=_no_password)
    except ssl.SSLError as e:
        reason = e.reason or ""
        hint = {
            "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
            "BAD_DECRYPT": "the key is encrypted; give an unencrypted key",
        }.get(reason, f"a file is not a valid PEM certificate or key ({reason or e})")
        raise TlsError(f"cannot use TLS certificate {cert_file} with key {key_file}: {hint}") from None
    except TypeError:  # raised by the password callback: the key is encrypted
        raise TlsError(f"TLS key {key_file} is encrypted (needs a password); give an unencrypted key") from None
    return ctx


def _no_password() -> str:
    raise TypeError("encrypted key")


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...] | None:
    try:
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in (os.stat(p) for p in paths))
    except OSError:
        return None


class ReloadingTls:
    """The server's TLS context; new connections get the current certificate (see the module docstring)."""

    def __init__(self, cert_file: Path, key_file: Path, recheck_s: float = RECHECK_S) -> None:
        self.cert_file, self.key_file, self.recheck_s = cert_file, key_file, recheck_s
        self.context = server_context(cert_file, key_file)  # the listening socket's: it carries the callback
        self.context.sni_callback = self._on_hello
        self.current = self.context
        self.fingerprint = _fingerprint(cert_file)
        self._stamp = _stamp(cert_file, key_file)
        self._next_check = time.monotonic() + recheck_s
        self.reloads = 0
        event(log, logging.INFO, "tls_enabled", cert_file=str(cert_file), sha256=self.fingerprint)

    def _on_hello(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                  ctx: ssl.SSLContext) -> int | None:
        self.maybe_reload()
        if self.current is not ctx:
            conn.context = self.current
        return None

    def maybe_reload(self, force: bool = False) -> bool:
        """Load the files again when they changed (checked at most every `recheck_s`); True if reloaded."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.recheck_s
        stamp = _stamp(self.cert_file, self.key_file)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            fresh = server_context(self.cert_file, self.key_file)
        except TlsError as e:
            event(log, logging.WARNING, "tls_reload_failed", error=str(e),
                  action="still serving the previous certificate; retrying when the files change")
            return False
        fresh.sni_callback = self._on_hello  # a connection switched to it may call back again (renegotiation)
        self.current, self._stamp = fresh, stamp
        self.fingerprint = _fingerprint(self.cert_file)
        self.reloads += 1
        event(log, logging.INFO, "tls_reloaded", cert_file=str(self.cert_file), sha256=self.fingerprint)
        return True


def context_factory(cert_file: str, key_file: str, config: object, default: object) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory` (bound with functools.partial; picklable for worker processes)."""
    return ReloadingTls(Path(cert_file), Path(key_file)).context
