"""Epochs as claim keys: one key per controller start, created by put-if-absent.

Keys, for a namespace ``ns``: ``ns/epochs/<epoch as 20 zero-padded digits>`` (one per claimed
epoch, never deleted) and ``ns/epoch`` (the decimal of the highest claim, for people reading
the store; nothing relies on it).

Invariants:

- an epoch is claimed by ``compare_and_set(claim_key, None, ...)``, which every store applies
  atomically across processes (the Ray GCS too), so no two claimers ever hold the same epoch;
- claims are contiguous: a claimer tries the number after the highest claim it lists, and the
  next number on each lost race, so every number below the highest claim is claimed;
- hence the fence of a writer holding epoch E is one key: "the claim of E + 1 is absent".
  Claiming costs one list and one put-if-absent, whatever the amount of state.
"""

from __future__ import annotations

from serveplane.exceptions import CorruptCheckpointError, StaleEpochError
from serveplane.kv_store.base import KVStore

MAX_CLAIM_RACES = 100
_DIGITS = 20  # 64-bit epochs sort as text in every store
_EPOCH_KEY_RETRIES = 10


class EpochClaims:
    def __init__(self, store: KVStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self.prefix = f"{namespace}/epochs/"
        self.epoch_key = f"{namespace}/epoch"

    def __repr__(self) -> str:
        from serveplane.redact import redact_url

        return f"<EpochClaims {self.namespace!r} on {redact_url(self.store.url)}>"

    def claim_key(self, epoch: int) -> str:
        return f"{self.prefix}{epoch:0{_DIGITS}d}"

    def fence_key(self, epoch: int) -> str:
        """The key whose presence means a writer of ``epoch`` is stale."""
        return self.claim_key(epoch + 1)

    def highest(self) -> int:
        """The highest claimed epoch; 0 before the first claim."""
        keys = self.store.list(self.prefix)
        return self._parse(keys[-1]) if keys else 0

    def _parse(self, key: str) -> int:
        digits = key[len(self.prefix):]
        if len(digits) != _DIGITS or not digits.isdigit():
            raise CorruptCheckpointError(
                f"epoch claim key {key!r} does not end in a {_DIGITS}-digit epoch; only serveplane "
                f"writes under {self.prefix!r}: delete that key")
        return int(digits)

    def claim_next(self) -> int:
        """Claim the epoch after the highest one; ``StaleEpochError`` after too many lost races."""
        epoch = self.highest() + 1
        for _ in range(MAX_CLAIM_RACES):
            if self.store.compare_and_set(self.claim_key(epoch), None, str(epoch).encode()):
                self._publish(epoch)
                return epoch
            epoch += 1  # another controller took this one: it is stale already, take the next
        raise StaleEpochError(
            f"could not claim an epoch in {self.namespace!r}: lost {MAX_CLAIM_RACES} races to other "
            "controllers starting at once; stop the extra controllers and start again")

    def _publish(self, epoch: int) -> None:
        """Raise ``ns/epoch`` to ``epoch`` unless a later claim already did (best effort)."""
        for _ in range(_EPOCH_KEY_RETRIES):
            raw = self.store.get(self.epoch_key)
            try:
                if raw is not None and int(raw) >= epoch:
                    return
            except ValueError:
                pass  # garbage in an informational key: overwrite it
            if self.store.compare_and_set(self.epoch_key, raw, str(epoch).encode()):
                return
