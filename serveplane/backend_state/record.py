"""The persisted target of one backend, and the versions that say which change reaches a
replica how.

A config field reaches running replicas in one of three ways:

- **roll over** (``version``): code, init args, actor options, and the actor's Ray
  concurrency limit (derived from ``max_concurrent_queries``; Ray fixes it at creation);
- **in place** (``config_version``): ``user_config``, ``max_batch_size``,
  ``batch_wait_timeout``, ``max_concurrent_queries`` and ``http_methods``, sent with
  ``reconfigure()``; a
  replica reports the ``config_version`` it runs, so a goal completes only when every
  running replica reports the new one;
- **controller or router side**: health options, timeouts, retries, queue bounds and
  autoscaling, which take effect when the change is committed (routers get them by
  long-poll).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serveplane.config import BackendConfig

IN_PLACE_FIELDS = ("user_config", "max_batch_size", "batch_wait_timeout", "max_concurrent_queries",
                   "http_methods")
# in-place fields that count only once set, so that versions computed before they existed hold
_COUNTED_WHEN_SET = ("http_methods",)


def content_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=repr).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def actor_max_concurrency(max_concurrent_queries: int) -> int:
    """Ray's per-actor concurrency limit for a replica: room for control calls beside work."""
    return max(1000, max_concurrent_queries * 2)


def config_version(config: BackendConfig) -> str:
    return content_hash({name: getattr(config, name) for name in IN_PLACE_FIELDS
                         if name not in _COUNTED_WHEN_SET or getattr(config, name) is not None})


def code_version_of(code_version: str | None, code_hash: str, init_hash: str,
                    actor_options: dict[str, Any], config: BackendConfig) -> str:
    return content_hash(code_version or code_hash, init_hash, actor_options,
                        actor_max_concurrency(config.max_concurrent_queries))


class BackendRecord(BaseModel):
    """Persisted target of one backend. Code lives in blobs named by hash, never here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str
    code_hash: str
    init_hash: str
    actor_options: dict[str, Any] = Field(default_factory=dict)
    config: BackendConfig
    target_replicas: int
    version: str
    config_version: str
    accepts_batches: bool = False
    code_version: str | None = None      # user-given stable version of the code, if any
    replica_tags: tuple[str, ...] = ()   # names the controller created (write-ahead)
    deleting: bool = False
    method_names: tuple[str, ...] | None = None   # public methods of the code (gRPC routing)

    @staticmethod
    def make(tag: str, code_hash: str, init_hash: str, actor_options: dict[str, Any],
             config: BackendConfig, accepts_batches: bool = False,
             replica_tags: tuple[str, ...] = (), target_replicas: int | None = None,
             code_version: str | None = None,
             method_names: tuple[str, ...] | list[str] | None = None) -> BackendRecord:
        return BackendRecord(
            tag=tag, code_hash=code_hash, init_hash=init_hash, actor_options=actor_options,
            config=config,
            target_replicas=config.initial_replicas() if target_replicas is None else target_replicas,
            version=code_version_of(code_version, code_hash, init_hash, actor_options, config),
            config_version=config_version(config),
            accepts_batches=accepts_batches, code_version=code_version, replica_tags=replica_tags,
            method_names=tuple(method_names) if method_names is not None else None)

    def same_definition(self, other: BackendRecord) -> bool:
        # pickled code is not byte-stable across processes: a given code_version wins
        same_code = (self.code_version == other.code_version if self.code_version and other.code_version
                     else self.code_hash == other.code_hash)
        return (same_code and self.init_hash == other.init_hash
                and self.actor_options == other.actor_options and self.config == other.config)

    def blob_hashes(self) -> tuple[str, str]:
        return self.code_hash, self.init_hash
