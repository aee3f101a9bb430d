"""How a backend receives a request: its *request convention*, chosen per backend.

- ``native`` (serveplane's own): a handle call's arguments are passed straight through; an
  HTTP call passes one ``HTTPRequest`` (or, to a method whose first parameter is annotated
  ``starlette.requests.Request``, a real starlette ``Request``).
- ``classic`` (Ray Serve 1.x): every call passes exactly one request object. HTTP calls get a
  real ``starlette.requests.Request``; handle calls get a ``HandleRequest`` whose
  ``query_params`` are the call's keyword arguments and whose body is its positional argument
  (method and headers from ``handle.options(http_method=..., http_headers=...)``); a request
  object passed to a handle call is handed on as it is. Batched methods get a list of them.

A classic backend's code travels wrapped in ``ClassicBackend``; the replica unwraps it and
converts each call (``classic_request``) before batching and before the user's method.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from serveplane.http.request import HTTPRequest
from serveplane.http.starlette_request import to_starlette


class RequestConvention(str, enum.Enum):
    NATIVE = "native"
    CLASSIC = "classic"


@dataclass(frozen=True)
class ClassicBackend:
    """User code (a function or class) whose replicas use the classic convention."""

    target: Any


def wrap(func_or_class: Any, convention: RequestConvention | str) -> Any:
    """What the client ships as a backend's code for ``convention``."""
    convention = RequestConvention(convention)
    return ClassicBackend(func_or_class) if convention is RequestConvention.CLASSIC else func_or_class


def unwrap(code: Any) -> tuple[Any, RequestConvention]:
    if isinstance(code, ClassicBackend):
        return code.target, RequestConvention.CLASSIC
    return code, RequestConvention.NATIVE


class HandleRequest:
    """The request a classic backend gets for a handle call (Ray Serve 1.x's ``ServeRequest``):
    part of starlette's ``Request`` interface, so one ``__call__(self, request)`` serves HTTP
    and Python callers alike."""

    def __init__(self, data: Any = None, query_params: Mapping[str, Any] | None = None,
                 method: str = "GET", headers: Mapping[str, str] | None = None) -> None:
        from starlette.datastructures import Headers, ImmutableMultiDict

        self._data = data
        self.query_params = ImmutableMultiDict(dict(query_params or {}))
        self.method = method.upper()
        self.headers = Headers(headers=dict(headers or {}))

    @property
    def data(self) -> Any:
        """The positional argument of the handle call (``None`` when there was none)."""
        return self._data

    async def body(self) -> Any:
        return self._data

    async def json(self) -> Any:
        if not isinstance(self._data, (dict, list)):
            raise TypeError(f"the handle call's argument is a {type(self._data).__name__}, not a dict "
                            "or list; read it with 'await request.body()'")
        return self._data

    async def form(self) -> Any:
        if not isinstance(self._data, dict):
            raise TypeError(f"the handle call's argument is a {type(self._data).__name__}, not a dict")
        return self._data

    def __repr__(self) -> str:
        return (f"<HandleRequest {self.method} body={type(self._data).__name__} "
                f"query_params={dict(self.query_params)}>")


def is_request_object(value: Any) -> bool:
    if isinstance(value, (HandleRequest, HTTPRequest)):
        return True
    try:
        from starlette.requests import Request
    except ImportError:  # pragma: no cover - starlette is a dependency
        return False
    return isinstance(value, Request)


def classic_request(args: tuple, kwargs: dict, http_method: str | None = None,
                    http_headers: Mapping[str, str] | None = None) -> Any:
    """The one request object a classic backend's method gets for a call."""
    if len(args) == 1 and not kwargs and is_request_object(args[0]):
        arg = args[0]
        return to_starlette(arg) if isinstance(arg, HTTPRequest) else arg
    if len(args) > 1:
        raise TypeError(
            f"a backend with the 1.x request convention takes at most one positional argument "
            f"(the request body) and keyword arguments (its query_params); this call passed "
            f"{len(args)} positional arguments")
    return HandleRequest(args[0] if args else None, kwargs, http_method or "GET", http_headers)
