"""Starlette streaming responses cross the replica -> proxy boundary as collected chunks.

An async generator cannot be pickled, so the replica drains ``body_iterator`` and sends the
chunks with the status and headers; the proxy streams them back out. The body is
buffered in the replica (no incremental streaming through Ray).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CollectedStream:
    chunks: list[bytes]
    status_code: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    media_type: str | None = None


async def collect_if_streaming(result: Any) -> Any:
    iterator = getattr(result, "body_iterator", None)
    if iterator is None or not hasattr(result, "status_code"):
        return result
    chunks: list[bytes] = []
    async for chunk in iterator:
        chunks.append(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
    return CollectedStream(chunks, result.status_code, list(result.raw_headers),
                           getattr(result, "media_type", None))
