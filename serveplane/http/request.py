"""The picklable request object a backend receives for an HTTP call."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    path: str
    query_params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON; invalid JSON raises ``ValueError`` naming the problem."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise ValueError(f"request body is not valid JSON: {exc}") from None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")
