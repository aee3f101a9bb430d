"""A real ``starlette.requests.Request``, rebuilt in the replica from the proxy's picklable
``HTTPRequest``, for backends that want one (the 1.x convention, or a native backend whose
parameter is annotated ``starlette.requests.Request``).

The rebuilt request is a plain ``starlette.requests.Request`` (its type is exactly that) whose
body is already read, so ``await request.body()`` / ``await request.json()`` answer at once,
and it pickles: it can be passed on through a handle to another backend.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from serveplane.http.request import HTTPRequest


class BufferedBody:
    """The ASGI ``receive`` of a rebuilt request: the whole body in one message; picklable."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self.body, "more_body": False}


def to_starlette(request: HTTPRequest) -> Any:
    from starlette.requests import Request

    host = request.headers.get("host", "")
    name, _, port = host.partition(":")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": urlencode(request.query_params).encode(),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
        "server": (name, int(port)) if name and port.isdigit() else None,
        "client": None,
    }
    rebuilt = Request(scope, BufferedBody(request.body))
    rebuilt._body = request.body  # read already: body()/json() need no receive round trip
    return rebuilt


def wants_starlette(method: Any) -> bool:
    """Does the first parameter of ``method`` ask for a ``starlette.requests.Request``?"""
    import inspect

    try:
        params = [p for p in inspect.signature(method).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    if not params:
        return False
    annotation = params[0].annotation
    if isinstance(annotation, str):
        return annotation.strip("'\"") in ("Request", "starlette.requests.Request")
    try:
        from starlette.requests import Request
    except ImportError:  # pragma: no cover - starlette is a dependency
        return False
    return isinstance(annotation, type) and issubclass(annotation, Request)
