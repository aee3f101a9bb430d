"""The user's gRPC services, read from their ``add_<Service>Servicer_to_server`` functions.

A generated function registers the service's method handlers on a server. It is called once
with a recording server, which keeps, per method, its kind (unary or streaming on each side)
and its message (de)serializers; the proxy then registers handlers of its own with the same
kinds and serializers, each routing the call to an endpoint. So messages reach replicas as
protobuf objects, and the proxy never needs the user's servicer class.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from serveplane.exceptions import InvalidConfigError


@dataclass(frozen=True)
class MethodSpec:
    service: str                   # full service name, e.g. "serveplane.example.Predictor"
    name: str                      # the RPC's method name, e.g. "Predict"
    request_streaming: bool
    response_streaming: bool
    request_deserializer: Any
    response_serializer: Any

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


class _RecordingServer:
    """Stands in for a grpc server while a generated add_*_to_server function runs."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}
        self.generic: list[Any] = []

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = dict(handlers)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


class _AnyServicer:
    """Every attribute is a placeholder behavior: only the registration's shape is kept."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def placeholder(*_args: Any) -> None:
            raise RuntimeError(f"serveplane's recording servicer was called for {name}")
        return placeholder


def import_function(path: str) -> Callable[..., Any]:
    module_name, sep, attr = path.rpartition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidConfigError(
            f"servicer function {path!r}: cannot import {module_name!r} ({exc}); the module and the "
            "message modules it imports must be importable by the proxy (an installed package, "
            "or the job's working directory)") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise InvalidConfigError(f"servicer function {path!r}: module {module_name!r} has no "
                                 f"function {attr!r}")
    return function


def read_services(paths: list[str]) -> list[MethodSpec]:
    """Every method of every service the functions at ``paths`` register."""
    specs: dict[str, MethodSpec] = {}
    for path in paths:
        server = _RecordingServer()
        try:
            import_function(path)(_AnyServicer(), server)
        except InvalidConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a function of another shape
            raise InvalidConfigError(
                f"servicer function {path!r} failed when called as add_<Service>Servicer_to_server("
                f"servicer, server): {type(exc).__name__}: {exc}") from None
        registered = server.registered or _from_generic(path, server.generic)
        for service, handlers in registered.items():
            for name, handler in handlers.items():
                spec = MethodSpec(service, name, bool(handler.request_streaming),
                                  bool(handler.response_streaming), handler.request_deserializer,
                                  handler.response_serializer)
                specs[spec.path] = spec
    return [specs[p] for p in sorted(specs)]


def _from_generic(path: str, generic: list[Any]) -> dict[str, dict[str, Any]]:
    """Generated code older than grpcio 1.62 registers only a generic handler; grpcio's own
    ``method_handlers_generic_handler`` keeps its handlers keyed by full method path."""
    out: dict[str, dict[str, Any]] = {}
    for handler in generic:
        table = getattr(handler, "_method_handlers", None)
        if not isinstance(table, dict):
            raise InvalidConfigError(f"servicer function {path!r} registered a handler serveplane "
                                     "cannot read; regenerate the module with grpcio-tools >= 1.62")
        for full, method_handler in table.items():
            service, _, name = full.lstrip("/").rpartition("/")
            out.setdefault(service, {})[name] = method_handler
    return out


def build_handlers(specs: list[MethodSpec], unary: Callable[[MethodSpec], Any],
                   stream: Callable[[MethodSpec], Any],
                   unsupported: Callable[[MethodSpec], Any]) -> dict[str, dict[str, Any]]:
    """grpc method handlers per service: ``unary(spec)`` behaviors for unary-unary methods,
    ``stream(spec)`` for server streaming, ``unsupported(spec)`` (a stream-stream behavior)
    for methods that stream requests."""
    import grpc

    services: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.request_streaming:
            handler = grpc.stream_stream_rpc_method_handler(unsupported(spec))
        elif spec.response_streaming:
            handler = grpc.unary_stream_rpc_method_handler(
                stream(spec), request_deserializer=spec.request_deserializer,
                response_serializer=spec.response_serializer)
        else:
            handler = grpc.unary_unary_rpc_method_handler(
                unary(spec), request_deserializer=spec.request_deserializer,
                response_serializer=spec.response_serializer)
        services.setdefault(spec.service, {})[spec.name] = handler
    return services
