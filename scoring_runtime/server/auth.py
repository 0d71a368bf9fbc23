"""Optional API-key auth: `Authorization: Bearer <key>`, keys from a file (a mounted Secret).

The file holds one key per line (blank lines and `#` comments ignored), so a key can be rotated
by adding the new one, moving clients over, then removing the old one. The file is re-read when
it changes (checked at most every few seconds), as Kubernetes updates mounted Secrets in place.
Every accepted key is compared with `hmac.compare_digest`, all of them each time, so timing does
not reveal which key or how much of it matched. Keys are never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from scoring_runtime.server.logs import event

log = logging.getLogger("scoring_runtime.server")
RECHECK_S = 5.0
MIN_KEY_CHARS = 16


class ApiKeyError(ValueError):
    """The key file is unusable (missing, empty)."""


def read_api_keys(path: Path) -> tuple[bytes, ...]:
    """The keys in `path`; raises ApiKeyError when there is none, so auth can never be silently off."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ApiKeyError(f"cannot read API key file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ApiKeyError(f"API key file {path} is not UTF-8 text (byte {e.start} is invalid); "
                          "write one key per line as plain text") from None
    keys = tuple(
        line.strip().encode() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    if not keys:
        raise ApiKeyError(f"API key file {path} holds no keys (one key per line)")
    if any(len(k) < MIN_KEY_CHARS for k in keys):
        event(log, logging.WARNING, "api_key_short", file=str(path), min_chars=MIN_KEY_CHARS)
    return keys


class ApiKeyAuth:
    """Checks bearer tokens against the keys of a file, reloading it when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys = read_api_keys(path)
        self._stamp = self._file_stamp()
        self._next_check = time.monotonic() + RECHECK_S

    def _file_stamp(self) -> tuple[float, int]:
        st = os.stat(self.path)
        return st.st_mtime, st.st_size

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RECHECK_S
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._keys = read_api_keys(self.path)
                self._stamp = stamp
                event(log, logging.INFO, "api_keys_reloaded", count=len(self._keys))
        except (OSError, ApiKeyError) as e:
            # Keep the old keys: a half-updated Secret must not lock everyone out (or open the door).
            event(log, logging.WARNING, "api_keys_reload_failed", error=str(e),
                  action=f"keeping the {len(self._keys)} keys read before; fix the file")

    def check(self, authorization: str | None) -> str | None:
        """None when the header carries a valid key, else why not (for the 401 body)."""
        if not authorization:
            return "missing"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed"
        self._maybe_reload()
        presented = token.strip().encode()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(key, presented)
        return None if ok else "invalid"
