"""Which methods of a backend an HTTP request may call.

Over HTTP (a request from the proxy: ``RequestMetadata.http``) a backend exposes ``__call__``,
the methods named in ``BackendConfig(http_methods=[...])`` and those marked
``@serveplane.http_method``, and never ``reconfigure``, ``check_health`` or a private name
(leading underscore), whatever the config or a mark says. Handles (callers inside the
cluster) keep calling any public method. Backends of the classic (Ray Serve 1.x) request
convention keep 1.x's rule: every public method over HTTP, the same three exclusions.

An HTTP request for a method that does not exist gets the same answer as one for a method
that is not exposed, so the HTTP surface does not tell which methods a backend has.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from serveplane.exceptions import InvalidConfigError, MethodNotExposedError

F = TypeVar("F", bound=Callable[..., Any])

NEVER_OVER_HTTP = frozenset({"reconfigure", "check_health"})
MARK = "_serveplane_http_method"
_SHOWN = 64


def _refusal(name: str) -> str | None:
    if name in NEVER_OVER_HTTP:
        return f"{name} is never exposed over HTTP"
    if name.startswith("_") and name != "__call__":
        return "private methods (a leading underscore) are never exposed over HTTP"
    if not name.isidentifier():
        return "a method name is a Python identifier"
    return None


def http_method(fn: F) -> F:
    """Mark a backend method as callable over HTTP (``X-SERVE-CALL-METHOD: <name>``)."""
    name = getattr(fn, "__name__", None)
    why = _refusal(name) if isinstance(name, str) else "it has no name"
    if why is not None:
        raise InvalidConfigError(f"@serveplane.http_method cannot mark {name!r}: {why}")
    setattr(fn, MARK, True)
    return fn


def check_http_methods(names: Iterable[Any] | None) -> list[str] | None:
    """``BackendConfig.http_methods`` validated: names a backend may expose over HTTP."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)):
        raise ValueError(f"http_methods is {names!r}; give a list of method names, e.g. ['predict']")
    out = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"http_methods names {name!r}; method names are non-empty strings")
        why = _refusal(name)
        if why is not None:
            raise ValueError(f"http_methods names {name!r}; {why}")
        out.append(name)
    return sorted(set(out))


def not_exposed(method_name: str) -> MethodNotExposedError:
    shown = method_name if len(method_name) <= _SHOWN else method_name[:_SHOWN] + "..."
    return MethodNotExposedError(
        f"method {shown!r} is not exposed over HTTP; a backend exposes __call__, the methods in "
        "BackendConfig(http_methods=[...]) and those marked @serveplane.http_method")


def check_name_over_http(method_name: str) -> None:
    """Refuse, before any lookup, a name that is never callable over HTTP."""
    if not isinstance(method_name, str) or _refusal(method_name) is not None:
        raise not_exposed(str(method_name))


def exposed_over_http(method_name: str, method: Callable[..., Any], http_methods: list[str] | None) -> bool:
    if _refusal(method_name) is not None:
        return False
    return (method_name == "__call__" or method_name in (http_methods or ())
            or bool(getattr(method, MARK, False)))
