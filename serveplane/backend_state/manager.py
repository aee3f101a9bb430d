"""All backends: the collection the control loop reconciles each tick."""

from __future__ import annotations

from typing import Any, Iterator

from serveplane.backend_state.backend import BackendRecord, BackendState, BackendUpdate, WrapperFactory
from serveplane.exceptions import BackendNotFoundError


class BackendStateManager:
    def __init__(self, wrapper_factory: WrapperFactory) -> None:
        self._factory = wrapper_factory
        self._backends: dict[str, BackendState] = {}

    def exists(self, tag: str) -> bool:
        state = self._backends.get(tag)
        return state is not None and not state.record.deleting

    def get(self, tag: str) -> BackendState:
        state = self._backends.get(tag)
        if state is None or state.record.deleting:
            raise BackendNotFoundError(
                f"backend {tag!r} does not exist; known backends: "
                f"{', '.join(self.tags()) or 'none'}")
        return state

    def get_any(self, tag: str) -> BackendState | None:
        """Also returns a backend that is being deleted."""
        return self._backends.get(tag)

    def tags(self) -> list[str]:
        return sorted(t for t, s in self._backends.items() if not s.record.deleting)

    def add(self, record: BackendRecord, code_blob: bytes, init_blob: bytes) -> BackendState:
        state = BackendState(record, code_blob, init_blob, self._factory)
        self._backends[record.tag] = state
        return state

    def remove(self, tag: str) -> None:
        self._backends.pop(tag, None)

    def __iter__(self) -> Iterator[BackendState]:
        return iter(list(self._backends.values()))

    def update(self, now: float) -> dict[str, BackendUpdate]:
        return {tag: state.update(now) for tag, state in list(self._backends.items())}

    def to_checkpoint(self) -> dict[str, Any]:
        return {tag: s.record.model_dump(mode="json") for tag, s in self._backends.items()}

    def all_replica_names(self) -> set[str]:
        return {r.wrapper.actor_name for s in self._backends.values() for r in s.replicas}
