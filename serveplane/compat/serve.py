"""The Ray Serve 1.x surface (``client.create_backend`` era, with the module-level
functions of 1.2), on serveplane.

- ``start(detached=..., http_host=..., http_port=...)`` and ``connect()`` return a ``Client``
  with 1.x's method names and arguments; the module-level functions (``create_backend``,
  ``get_handle``, ...) use the client of the last ``start``/``connect``.
- A detached instance is serveplane's default namespace; every non-detached ``start()`` is
  a new instance (namespace) of its own that ends with its client, as in 1.x.
- Backends use the classic request convention: one starlette ``Request`` per HTTP call, one
  ``HandleRequest`` per handle call (kwargs as ``query_params``, the positional argument as
  the body).
- ``handle.remote()`` returns a Ray ``ObjectRef`` once a replica has the call; the async
  handle (``get_handle(..., sync=False)``) returns it from a coroutine.
- Errors: input errors stay ``ValueError``/``TypeError``; an unplaceable backend and a
  controller that is gone raise ``RayServeException`` (also the native error).
"""

from __future__ import annotations

import contextlib
import logging
import random
import string
from typing import Any, Callable, Iterator, Mapping

from pydantic import model_validator

import serveplane
from serveplane import accept_batch
from serveplane.config import BackendConfig as _NativeBackendConfig
from serveplane.exceptions import ControllerUnavailableError
from serveplane.placement import PlacementError
from serveplane.records import CONTROLLER_NAME, DEFAULT_NAMESPACE
from serveplane.replica.convention import HandleRequest, RequestConvention
from serveplane.router import Handle as _NativeHandle

logger = logging.getLogger(__name__)

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
SERVE_CONTROLLER_NAME = CONTROLLER_NAME

__all__ = ["BackendConfig", "Client", "HandleRequest", "RayServeException", "RayServeHandle",
           "accept_batch", "connect", "create_backend", "create_endpoint", "delete_backend",
           "delete_endpoint", "get_backend_config", "get_handle", "list_backends", "list_endpoints",
           "set_traffic", "shadow_traffic", "shutdown", "start", "update_backend_config"]


class RayServeException(Exception):
    """1.x's error for what the user cannot fix by changing an argument."""


class CannotScaleBackendError(RayServeException, PlacementError):
    """The backend's replicas cannot be placed (1.x: "Cannot scale backend ...")."""


class ServeNotRunningError(RayServeException, ControllerUnavailableError):
    """No serve instance to talk to (never started, or shut down)."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except PlacementError as exc:
        text = str(exc)
        raise CannotScaleBackendError(text[:1].upper() + text[1:]) from None
    except ControllerUnavailableError as exc:
        raise ServeNotRunningError(str(exc)) from None


_RENAMED = {"experimental_graceful_shutdown_timeout_s": "graceful_shutdown_timeout_s"}
_IGNORED = {
    # serveplane's drain waits on an event, not a polling loop
    "experimental_graceful_shutdown_wait_loop_s",
    "internal_metadata",
}


class BackendConfig(_NativeBackendConfig):
    """serveplane's ``BackendConfig`` that also takes 1.x's ``experimental_*`` keys."""

    @model_validator(mode="before")
    @classmethod
    def _classic_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = {}
        for key, value in data.items():
            if key in _IGNORED:
                continue
            out[_RENAMED.get(key, key)] = value
        return out


def _native_config(config: Any) -> Any:
    if config is None or isinstance(config, _NativeBackendConfig):
        return config
    if isinstance(config, Mapping):
        return BackendConfig.model_validate(dict(config))
    return config  # the native client names the problem


def _native_actor_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """1.x took ``resources={"CPU": n, "GPU": m}``; Ray 2 wants ``num_cpus``/``num_gpus``."""
    if options is None:
        return None
    out = dict(options)
    resources = dict(out.get("resources") or {})
    for name, option in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        if name in resources and option not in out:
            out[option] = resources.pop(name)
    if "resources" in out:
        out["resources"] = resources
        if not resources:
            del out["resources"]
    return out


class RayServeHandle:
    """1.x's handle: ``ray.get(handle.remote(data, **kwargs))``; ``sync=False`` gives the
    async handle, whose ``await handle.remote()`` returns the ``ObjectRef``."""

    def __init__(self, native: _NativeHandle, sync: bool = True) -> None:
        self._native = native
        self._sync = sync

    @property
    def endpoint_name(self) -> str:
        return self._native.endpoint

    def options(self, *, method_name: str | None = None, shard_key: Any = None,
                http_method: str | None = None, http_headers: dict[str, str] | None = None) -> RayServeHandle:
        return RayServeHandle(self._native.options(method_name=method_name, shard_key=shard_key,
                                                   http_method=http_method, http_headers=http_headers),
                              self._sync)

    def remote(self, request_data: Any = None, **kwargs: Any) -> Any:
        args = () if request_data is None else (request_data,)
        response = self._native.remote(*args, **kwargs)
        if self._sync:
            return response.sent_ref()
        return response.sent_ref_async()

    def __reduce__(self) -> Any:
        return (RayServeHandle, (self._native, self._sync))

    def __repr__(self) -> str:
        return f"<RayServeHandle {self.endpoint_name} sync={self._sync}>"


class Client:
    """1.x's ``serve.api.Client``: the methods and arguments of that API."""

    def __init__(self, native: serveplane.Client, namespace: str, detached: bool) -> None:
        self._native = native
        self._namespace = namespace
        self._detached = detached
        self._controller_name = f"{CONTROLLER_NAME}:{namespace}"
        self._shutdown = False

    @property
    def _controller(self) -> Any:
        """The controller actor (1.x tests kill it with ``ray.kill``)."""
        return self._native._controller

    @property
    def native(self) -> serveplane.Client:
        """The serveplane ``Client`` of the same instance (sessions, metrics, routers...)."""
        return self._native

    def __repr__(self) -> str:
        return f"<serveplane.compat Client {self._namespace!r} detached={self._detached}>"

    def __del__(self) -> None:
        # 1.x: a non-detached instance ends with the client that started it
        if getattr(self, "_detached", True) or getattr(self, "_shutdown", True):
            return
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - at exit Ray may be gone already
            pass

    # -- backends ----------------------------------------------------------------------
    def create_backend(self, backend_tag: str, func_or_class: Callable[..., Any] | type,
                       *actor_init_args: Any, ray_actor_options: Mapping[str, Any] | None = None,
                       config: Any = None) -> None:
        with _translated():
            self._native.create_backend(backend_tag, func_or_class, *actor_init_args,
                                        ray_actor_options=_native_actor_options(ray_actor_options),
                                        config=_native_config(config),
                                        request_convention=RequestConvention.CLASSIC)

    def update_backend_config(self, backend_tag: str, config_options: Any) -> None:
        with _translated():
            self._native.update_backend_config(backend_tag, _native_config(config_options))

    def get_backend_config(self, backend_tag: str) -> BackendConfig:
        with _translated():
            return BackendConfig.model_validate(self._native.get_backend_config(backend_tag).model_dump())

    def list_backends(self) -> dict[str, BackendConfig]:
        with _translated():
            return {tag: BackendConfig.model_validate(cfg.model_dump())
                    for tag, cfg in self._native.list_backends().items()}

    def delete_backend(self, backend_tag: str, force: bool = False) -> None:
        with _translated():
            self._native.delete_backend(backend_tag, force=force)

    # -- endpoints ---------------------------------------------------------------------
    def create_endpoint(self, endpoint_name: str, *, backend: str | None = None,
                        route: str | None = None, methods: list[str] | tuple[str, ...] = ("GET",)) -> None:
        if backend is None:
            raise TypeError(f"create_endpoint({endpoint_name!r}) needs backend=<backend tag>")
        if not isinstance(backend, str):
            raise TypeError(f"backend is {backend!r}; it must be a backend tag (a string)")
        with _translated():
            self._native.create_endpoint(endpoint_name, backend=backend, route=route,
                                         methods=[m.upper() for m in methods])

    def delete_endpoint(self, endpoint: str) -> None:
        with _translated():
            self._native.delete_endpoint(endpoint)

    def set_traffic(self, endpoint_name: str, traffic_policy_dictionary: Mapping[str, float]) -> None:
        with _translated():
            self._native.set_traffic(endpoint_name, traffic_policy_dictionary)

    def shadow_traffic(self, endpoint_name: str, backend_tag: str, proportion: float) -> None:
        with _translated():
            self._native.shadow_traffic(endpoint_name, backend_tag, proportion)

    def list_endpoints(self) -> dict[str, dict[str, Any]]:
        with _translated():
            return {name: {"route": e["route"], "methods": list(e["methods"]),
                           "traffic": dict(e["traffic"]), "shadows": dict(e["shadows"])}
                    for name, e in self._native.list_endpoints().items()}

    # -- data path, lifecycle --------------------------------------------------------------
    def get_handle(self, endpoint_name: str, missing_ok: bool = False, sync: bool = True) -> RayServeHandle:
        from serveplane.router import get_handle as native_handle

        with _translated():
            if not missing_ok:
                self._native.get_handle(endpoint_name)  # raises naming the known endpoints
            return RayServeHandle(native_handle(endpoint_name, CONTROLLER_NAME, self._namespace), sync)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._native.shutdown()
        global _global_client
        if _global_client is self:
            _global_client = None


_global_client: Client | None = None


def start(detached: bool = False, http_host: str | None = DEFAULT_HTTP_HOST,
          http_port: int = DEFAULT_HTTP_PORT, http_middlewares: list[Any] | None = None,
          http_options: Mapping[str, Any] | None = None) -> Client:
    """Start an instance: ``detached=True`` is the cluster's long-lived one (namespace
    ``serveplane``; ``connect()`` finds it), otherwise a new one that ends with its client.
    ``http_host=None`` starts no HTTP proxy."""
    import ray

    if http_middlewares:
        raise RayServeException("http_middlewares are not supported by serveplane; put the "
                                "middleware in front of the proxy, or in the backend")
    if detached:
        namespace = DEFAULT_NAMESPACE
        if ray.is_initialized():
            try:
                ray.get_actor(CONTROLLER_NAME, namespace=namespace)
            except ValueError:
                pass
            else:
                raise RayServeException("called serve.start(detached=True) but a detached instance is "
                                        "already running; use serve.connect() to attach to it")
    else:
        namespace = "serve-" + "".join(random.choices(string.ascii_lowercase, k=8))
    options: dict[str, Any] = dict(http_options or {})
    if http_host is None:
        options["location"] = "NoServer"
    else:
        options.setdefault("host", http_host)
        options.setdefault("port", http_port)
    native = serveplane.start(detached=detached, http_options=options, kv_store=f"ray://{namespace}",
                              namespace=namespace)
    return _set_global(Client(native, namespace, detached))


def connect() -> Client:
    """Attach to the instance this code runs in (inside a backend), else the detached one."""
    from serveplane.context import get_replica_context

    replica = get_replica_context()
    namespace = replica.namespace if replica is not None and replica.namespace else DEFAULT_NAMESPACE
    try:
        native = serveplane.connect(namespace=namespace)
    except ControllerUnavailableError as exc:
        raise ServeNotRunningError(f"{exc}; in Ray Serve 1.x terms: call serve.start(detached=True) "
                                   "first") from None
    return _set_global(Client(native, namespace, detached=True))


def _set_global(client: Client) -> Client:
    global _global_client
    _global_client = client
    return client


def _client() -> Client:
    if _global_client is None or _global_client._shutdown:
        return connect()
    return _global_client


def shutdown() -> None:
    global _global_client
    if _global_client is not None:
        _global_client.shutdown()
        _global_client = None


# Ray Serve 1.2's module-level API: the client of the last start()/connect().
def create_backend(backend_tag: str, func_or_class: Callable[..., Any] | type, *actor_init_args: Any,
                   ray_actor_options: Mapping[str, Any] | None = None, config: Any = None) -> None:
    _client().create_backend(backend_tag, func_or_class, *actor_init_args,
                             ray_actor_options=ray_actor_options, config=config)


def update_backend_config(backend_tag: str, config_options: Any) -> None:
    _client().update_backend_config(backend_tag, config_options)


def get_backend_config(backend_tag: str) -> BackendConfig:
    return _client().get_backend_config(backend_tag)


def list_backends() -> dict[str, BackendConfig]:
    return _client().list_backends()


def delete_backend(backend_tag: str, force: bool = False) -> None:
    _client().delete_backend(backend_tag, force=force)


def create_endpoint(endpoint_name: str, *, backend: str | None = None, route: str | None = None,
                    methods: list[str] | tuple[str, ...] = ("GET",)) -> None:
    _client().create_endpoint(endpoint_name, backend=backend, route=route, methods=methods)


def delete_endpoint(endpoint: str) -> None:
    _client().delete_endpoint(endpoint)


def set_traffic(endpoint_name: str, traffic_policy_dictionary: Mapping[str, float]) -> None:
    _client().set_traffic(endpoint_name, traffic_policy_dictionary)


def shadow_traffic(endpoint_name: str, backend_tag: str, proportion: float) -> None:
    _client().shadow_traffic(endpoint_name, backend_tag, proportion)


def list_endpoints() -> dict[str, dict[str, Any]]:
    return _client().list_endpoints()


def get_handle(endpoint_name: str, missing_ok: bool = False, sync: bool = True) -> RayServeHandle:
    return _client().get_handle(endpoint_name, missing_ok=missing_ok, sync=sync)
