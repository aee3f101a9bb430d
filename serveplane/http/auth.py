"""API keys of the HTTP proxy: ``HTTPOptions.api_keys`` and the lines of ``api_keys_file``.

Invariants:

- only SHA-256 digests of the keys are kept, and a presented key is looked up by its digest,
  so the time a lookup takes says nothing about how much of a key matched;
- the file is re-read when it changes (its inode, size or modification time; looked at no
  more than once per ``check_period_s``): a key removed from it stops working within that
  period. A file that cannot be read accepts no key (fail closed) and is logged;
- keys never appear in logs, errors or ``repr``; a key is known by ``key_id`` (the first 12
  hex digits of its digest).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Callable, Iterable

from serveplane.config import api_key_problem

logger = logging.getLogger("serveplane.http")

CHECK_PERIOD_S = 1.0


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ApiKeys:
    def __init__(self, keys: Iterable[str] | None, path: str | None,
                 clock: Callable[[], float] = time.monotonic, check_period_s: float = CHECK_PERIOD_S) -> None:
        self.enabled = keys is not None or path is not None
        self._static = {key_digest(k) for k in keys or ()}
        self._path = path
        self._clock = clock
        self._check_period_s = check_period_s
        self._from_file: set[str] = set()
        self._file_state: tuple[int, int, int] | None = None
        self._checked_at = -float("inf")
        if path is not None:
            self._reload(raise_errors=True)

    def __repr__(self) -> str:
        source = f" + file {self._path!r}" if self._path else ""
        return f"<ApiKeys [{len(self._static)} given{source}: {len(self._from_file)} keys]>"

    def match(self, presented: str | None) -> str | None:
        """The id of the key presented, if it is one of ours; else None."""
        if presented is None:
            return None
        if self._path is not None and self._clock() - self._checked_at >= self._check_period_s:
            self._reload()
        digest = key_digest(presented)
        return digest[:12] if digest in self._static or digest in self._from_file else None

    def holds(self, key_id: str) -> bool:
        """Whether the key of this id (``match``'s answer) is still one of ours."""
        if self._path is not None and self._clock() - self._checked_at >= self._check_period_s:
            self._reload()
        return len(key_id) == 12 and any(d.startswith(key_id) for d in self._static | self._from_file)

    def _reload(self, raise_errors: bool = False) -> None:
        assert self._path is not None
        self._checked_at = self._clock()
        try:
            info = os.stat(self._path)
            state = (info.st_ino, info.st_size, info.st_mtime_ns)
            if state == self._file_state:
                return
            with open(self._path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as exc:
            if raise_errors:
                raise ValueError(f"api_keys_file {self._path!r} cannot be read: {exc}") from None
            if self._file_state is not None or self._from_file:
                logger.error("api_keys_file %r cannot be read (%s); accepting none of its keys",
                             self._path, exc)
            self._from_file, self._file_state = set(), None
            return
        keys, skipped = set(), 0
        for line in lines:
            if not line or line.startswith("#"):
                continue
            if api_key_problem(line) is not None:
                skipped += 1
                continue
            keys.add(key_digest(line))
        if skipped:
            logger.error("api_keys_file %r: skipped %d line(s) that are not valid API keys (at least "
                         "16 printable ASCII characters, no spaces)", self._path, skipped)
        self._from_file, self._file_state = keys, state
        logger.info("api_keys_file %r loaded: %d key(s)", self._path, len(keys))
