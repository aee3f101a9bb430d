"""The state key: what makes the store's records, undo log and blobs authenticated.

Invariants:

- every record, the undo log and every blob carry an HMAC-SHA256 under the state key, over
  a domain tag, the namespace, the item's name and its content (length-prefixed, so no two
  inputs share an encoding). An item is accepted only as written by a holder of the key,
  under the same namespace and name: moving a record to another name or namespace, or a
  blob to another digest, fails as surely as changing its bytes;
- the store never holds the key; the secret never appears in ``repr``, ``str``, logs,
  errors or status, only its ``id`` (an HMAC of a fixed label: it tells keys apart and
  reveals nothing of the secret) and where it came from.

Where the key comes from (environment, key file) is ``serveplane.state_key``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from serveplane.exceptions import InvalidConfigError

MIN_KEY_LENGTH = 32
MAC_BYTES = 32


class StateKey:
    """A secret of at least ``MIN_KEY_LENGTH`` bytes and where it came from."""

    __slots__ = ("_secret", "source", "id")

    def __init__(self, secret: bytes | str, source: str) -> None:
        if isinstance(secret, str):
            secret = secret.strip().encode()
        if not isinstance(secret, bytes) or len(secret) < MIN_KEY_LENGTH:
            raise InvalidConfigError(
                f"state key from {source} is {len(secret) if isinstance(secret, bytes) else 0} "
                f"bytes; a state key has at least {MIN_KEY_LENGTH} (generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(32))')")
        self._secret = secret
        self.source = source
        self.id = hmac.new(secret, b"serveplane/state-key-id", hashlib.sha256).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"<StateKey {self.id} from {self.source}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        # the controller actor receives the key as an argument: Ray pickles it
        return (StateKey, (self._secret, self.source))

    def describe(self) -> str:
        """How errors and status name this key (never the secret)."""
        return f"state key {self.id} ({self.source})"

    def mac(self, *parts: bytes) -> bytes:
        h = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in parts:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()

    def verify(self, mac: bytes, *parts: bytes) -> bool:
        return hmac.compare_digest(mac, self.mac(*parts))
