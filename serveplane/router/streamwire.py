"""How a stream's chunks travel: what one Ray object of a streaming call holds.

The replica sends chunks one by one, or several produced while the previous object was
in transit as one ``Chunks``; a ``StreamStart`` (status and headers of a starlette
``StreamingResponse``) comes first when there is one; ``Whole`` is a method that returned
one value instead of a stream (see ``replica/streaming.py``).
"""

from __future__ import annotations

from typing import Any

from serveplane.replica.streaming import Chunks, StreamStart, Whole


def stream_items(chunk: Any) -> list:
    """The user's chunks in one travelled object (none for a ``StreamStart``)."""
    if isinstance(chunk, Chunks):
        return chunk.items
    if isinstance(chunk, StreamStart):
        return []
    if isinstance(chunk, Whole):
        return [chunk.value]
    return [chunk]
