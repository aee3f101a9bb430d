"""Read your writes: a change call returns only once every HTTP proxy and every router of
the calling process serves the change.

The controller answers a change with the long-poll snapshot ids it published (or the client
asks for them, ``snapshot_ids``, after a goal). The client then asks each proxy to confirm
it holds those snapshots or later ones (``HTTPProxyActor.wait_for_snapshots``, which waits
with a deadline) and waits for its own process's long-poll client the same way. A process
that follows none of the keys has nothing stale to serve: its first subscription is sent
the latest value.

A proxy that is dead is skipped (restarted, it subscribes afresh); one that does not
confirm within the deadline is named in a warning, and the call returns: the change is
committed either way, only its visibility is late.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from serveplane.long_poll.client import LongPollClient
from serveplane.records import CONTROLLER_NAME

logger = logging.getLogger(__name__)

PROXY_PREFIX = "serveplane_proxy:"
DEFAULT_CONFIRM_TIMEOUT_S = 10.0


@dataclass
class Confirmation:
    """What one wait found: how long it took and who was late or unreachable."""

    seconds: float = 0.0
    proxies: int = 0
    late: dict[str, dict[str, str]] = field(default_factory=dict)   # proxy -> keys behind
    unreachable: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.late


def proxy_actors(namespace: str) -> list[tuple[str, Any]]:
    """Every HTTP proxy actor of ``namespace`` (one per node at most)."""
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == namespace and entry.get("name", "").startswith(PROXY_PREFIX):
            try:
                found.append((entry["name"], ray.get_actor(entry["name"], namespace=namespace)))
            except ValueError:
                pass  # gone meanwhile
    return found


def wait_until_visible(snapshot_ids: dict[str, str], namespace: str,
                       timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S) -> Confirmation:
    """Block until every proxy of ``namespace`` and this process's routers hold
    ``snapshot_ids`` (or later snapshots), or ``timeout_s`` passes."""
    started = time.perf_counter()
    result = Confirmation()
    if not snapshot_ids:
        return result
    pending = [(name, actor.wait_for_snapshots.remote(snapshot_ids, timeout_s))
               for name, actor in proxy_actors(namespace)]
    result.proxies = len(pending)
    local = LongPollClient.existing(CONTROLLER_NAME, namespace)
    if local is not None:
        behind = local.wait_for_snapshots(snapshot_ids, timeout_s)
        if behind:
            result.late["this process"] = behind
    deadline = time.monotonic() + timeout_s + 5.0
    for name, ref in pending:
        try:
            behind = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            result.late[name] = {key: "?" for key in snapshot_ids}
            continue
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            result.unreachable.append(name)
            continue
        if behind:
            result.late[name] = behind
    result.seconds = time.perf_counter() - started
    if result.late:
        logger.warning("a change is committed but not yet served by %s after %.1fs (keys behind: %s); "
                       "it will be once their long-poll catches up", ", ".join(sorted(result.late)),
                       timeout_s, sorted({k for keys in result.late.values() for k in keys}))
    return result
