"""``Client``: the Ray Serve 1.x-style API.

Every method validates what it can locally, calls the controller, and (unless
``blocking=False``) waits for the goal the controller returns. Calls survive a controller
restart: they retry until their deadline, and the controller's own checks make every
call safe to repeat (identical re-creation is a no-op, deletes of missing objects too).

Read your writes: a change returns only once every HTTP proxy and every router of this
process serves it (``serveplane.visibility``); ``read_your_writes = False`` returns as soon
as the controller committed it.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from typing import Any, Callable, Mapping

import cloudpickle
import ray

from serveplane.config import BackendConfig, parse_backend_config, validate_actor_options
from serveplane.exceptions import (
    ControllerUnavailableError,
    InvalidConfigError,
    ReplicaStartupError,
    RequestTimeoutError,
    ServeplaneError,
)
from serveplane.placement import check_placeable
from serveplane.records import CONTROLLER_NAME, keys
from serveplane.replica.convention import RequestConvention, wrap
from serveplane.visibility import DEFAULT_CONFIRM_TIMEOUT_S, Confirmation, wait_until_visible

logger = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT_S = 60.0
DEFAULT_GOAL_TIMEOUT_S = 120.0
_RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
              ray.exceptions.GetTimeoutError)


def method_names(func_or_class: Any) -> list[str]:
    """The public methods a backend's code defines (``__call__`` included): recorded with the
    backend, so that the gRPC proxy can find the endpoint that serves an RPC method."""
    if not inspect.isclass(func_or_class):
        return ["__call__"]
    return sorted(name for name in dir(func_or_class)
                  if (name == "__call__" or not name.startswith("_"))
                  and name not in ("reconfigure", "check_health")
                  and callable(getattr(func_or_class, name, None))
                  and (name != "__call__" or "__call__" in _defined(func_or_class)))


def _defined(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ if klass is not object for name in vars(klass)}


def _accepts_batches(func_or_class: Any) -> bool:
    target = func_or_class.__call__ if inspect.isclass(func_or_class) else func_or_class
    return bool(getattr(target, "_serveplane_accept_batch", False))


class Client:
    def __init__(self, controller: Any, namespace: str, detached: bool = True) -> None:
        self._controller = controller
        self._namespace = namespace
        self._detached = detached
        self._shutdown = False
        self.http_urls: list[str] = []
        self.grpc_addresses: list[str] = []   # host:port of each gRPC proxy started
        self._proxies: list[Any] = []
        self.read_your_writes = True
        self.confirm_timeout_s = DEFAULT_CONFIRM_TIMEOUT_S
        self.last_confirmation: Confirmation | None = None

    def __repr__(self) -> str:
        return f"<serveplane.Client namespace={self._namespace!r}>"

    # -- plumbing ------------------------------------------------------------------
    def _call(self, method: str, *args: Any, timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
              **kwargs: Any) -> Any:
        if self._shutdown:
            raise ControllerUnavailableError("this client was shut down; call serveplane.start() again")
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                ref = getattr(self._controller, method).remote(*args, **kwargs)
                return ray.get(ref, timeout=max(0.1, remaining))
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            except _RETRYABLE as exc:
                if time.monotonic() + delay >= deadline:
                    raise ControllerUnavailableError(
                        f"controller {CONTROLLER_NAME!r} did not answer {method} within "
                        f"{timeout_s:.0f}s: {exc}") from None
                time.sleep(delay)
                delay = min(1.0, delay * 2)
                try:
                    self._controller = ray.get_actor(CONTROLLER_NAME, namespace=self._namespace)
                except ValueError:
                    pass

    def _confirm(self, snapshot_ids: dict[str, str] | None) -> None:
        """Return once every proxy and this process's routers hold these snapshots."""
        if self.read_your_writes and snapshot_ids:
            self.last_confirmation = wait_until_visible(snapshot_ids, self._namespace,
                                                        self.confirm_timeout_s)

    def _confirm_backend(self, backend_tag: str, blocking: bool) -> None:
        """After a backend's goal completed: its replica set and config are served."""
        if blocking and self.read_your_writes:
            self._confirm(self._call("snapshot_ids", [keys.replicas(backend_tag),
                                                      keys.backend_config(backend_tag)]))

    def _wait(self, goal_id: str | None, blocking: bool, timeout_s: float) -> str | None:
        if goal_id is None or not blocking:
            return goal_id
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(
                    f"goal {goal_id} did not complete within {timeout_s:.0f}s; check "
                    "client.get_status() for replicas that cannot start or be placed")
            result = self._call("wait_for_goal", goal_id, min(remaining, 10.0),
                                timeout_s=remaining + 15.0)
            if result["error"]:
                raise ReplicaStartupError(result["error"])
            if result["done"]:
                return goal_id

    # -- backends --------------------------------------------------------------------
    def create_backend(self, backend_tag: str, func_or_class: Callable[..., Any] | type,
                       *actor_init_args: Any, ray_actor_options: Mapping[str, Any] | None = None,
                       config: BackendConfig | Mapping[str, Any] | None = None,
                       blocking: bool = True, timeout_s: float = DEFAULT_GOAL_TIMEOUT_S,
                       code_version: str | None = None,
                       request_convention: RequestConvention | str = RequestConvention.NATIVE,
                       **actor_init_kwargs: Any) -> str | None:
        """Register a backend and (``blocking``) wait until its replicas run.

        ``request_convention`` says how calls reach the code: ``"native"`` passes arguments
        straight through; ``"classic"`` hands one request object per call, as Ray Serve 1.x
        did (``serveplane.replica.convention``; ``serveplane.compat`` uses it)."""
        if not callable(func_or_class):
            raise InvalidConfigError(
                f"func_or_class for backend {backend_tag!r} is {func_or_class!r}; give a "
                "function or a class")
        if not inspect.isclass(func_or_class) and (actor_init_args or actor_init_kwargs):
            raise InvalidConfigError(
                f"backend {backend_tag!r} is a function; init args are only for classes")
        options = validate_actor_options(ray_actor_options)
        cfg = parse_backend_config(config)
        check_placeable(backend_tag, options)
        code = cloudpickle.dumps(wrap(func_or_class, _convention(request_convention)))
        goal = self._call("create_backend", backend_tag, code,
                          cloudpickle.dumps((actor_init_args, actor_init_kwargs)), options,
                          cfg.model_dump(mode="json", exclude_unset=True),
                          _accepts_batches(func_or_class), code_version, method_names(func_or_class))
        self._wait(goal, blocking, timeout_s)
        self._confirm_backend(backend_tag, blocking)
        return goal

    def update_backend(self, backend_tag: str, func_or_class: Callable[..., Any] | type | None = None,
                       *actor_init_args: Any, ray_actor_options: Mapping[str, Any] | None = None,
                       config: BackendConfig | Mapping[str, Any] | None = None,
                       blocking: bool = True, timeout_s: float = DEFAULT_GOAL_TIMEOUT_S,
                       code_version: str | None = None,
                       init_kwargs: Mapping[str, Any] | None = None,
                       request_convention: RequestConvention | str = RequestConvention.NATIVE) -> str | None:
        """Change a backend's code, init args, actor options or config; replicas roll over
        one at a time without dropping below the target count. New code runs in the
        ``request_convention`` given here."""
        code = (cloudpickle.dumps(wrap(func_or_class, _convention(request_convention)))
                if func_or_class is not None else None)
        init = (cloudpickle.dumps((actor_init_args, dict(init_kwargs or {})))
                if func_or_class is not None else None)
        options = validate_actor_options(ray_actor_options) if ray_actor_options is not None else None
        if options is not None:
            check_placeable(backend_tag, options)
        update = parse_backend_config(config).model_dump(mode="json", exclude_unset=True) if config else None
        batches = _accepts_batches(func_or_class) if func_or_class is not None else None
        goal = self._call("update_backend", backend_tag, code, init, options, update, batches,
                          code_version, method_names(func_or_class) if func_or_class is not None else None)
        self._wait(goal, blocking, timeout_s)
        self._confirm_backend(backend_tag, blocking)
        return goal

    def update_backend_config(self, backend_tag: str, config_options: BackendConfig | Mapping[str, Any],
                              blocking: bool = True,
                              timeout_s: float = DEFAULT_GOAL_TIMEOUT_S) -> str | None:
        """Merge only the fields set in ``config_options`` into the backend's config."""
        update = parse_backend_config(config_options).model_dump(mode="json", exclude_unset=True)
        goal = self._call("update_backend_config", backend_tag, update)
        self._wait(goal, blocking, timeout_s)
        self._confirm_backend(backend_tag, blocking)
        return goal

    def get_backend_config(self, backend_tag: str) -> BackendConfig:
        return BackendConfig.model_validate(self._call("get_backend_config", backend_tag))

    def list_backends(self) -> dict[str, BackendConfig]:
        return {tag: BackendConfig.model_validate(cfg)
                for tag, cfg in self._call("list_backends").items()}

    def delete_backend(self, backend_tag: str, force: bool = False, blocking: bool = True,
                       timeout_s: float = DEFAULT_GOAL_TIMEOUT_S) -> str | None:
        goal = self._call("delete_backend", backend_tag, force)
        self._wait(goal, blocking, timeout_s)
        self._confirm_backend(backend_tag, blocking)
        return goal

    # -- endpoints -------------------------------------------------------------------
    def create_endpoint(self, endpoint_name: str, *, backend: str, route: str | None = None,
                        methods: list[str] | tuple[str, ...] = ("GET",), router: Any = None,
                        batch_size: int | None = None, batch_timeout_s: float = 0.0) -> None:
        name, blob = _router_arg(router)
        self._confirm(self._call("create_endpoint", endpoint_name, backend, route, list(methods),
                                 name, blob, batch_size, batch_timeout_s))

    def delete_endpoint(self, endpoint: str) -> None:
        self._confirm(self._call("delete_endpoint", endpoint))

    def set_traffic(self, endpoint_name: str, traffic_policy_dictionary: Mapping[str, float]) -> None:
        self._confirm(self._call("set_traffic", endpoint_name, dict(traffic_policy_dictionary)))

    def shadow_traffic(self, endpoint_name: str, backend_tag: str, proportion: float) -> None:
        self._confirm(self._call("shadow_traffic", endpoint_name, backend_tag, proportion))

    def set_router(self, endpoint_name: str, router: Any) -> None:
        name, blob = _router_arg(router)
        self._confirm(self._call("set_router", endpoint_name, name, blob))

    def set_batching(self, endpoint_name: str, batch_size: int | None,
                     batch_timeout_s: float = 0.0) -> None:
        self._confirm(self._call("set_batching", endpoint_name, batch_size, batch_timeout_s))

    def list_endpoints(self) -> dict[str, dict[str, Any]]:
        return self._call("list_endpoints")

    # -- progressive rollouts ----------------------------------------------------------
    def start_rollout(self, endpoint_name: str, backend_tag: str,
                      steps: list[float] | tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 1.0),
                      interval_s: float = 60.0, guards: Mapping[str, Any] | None = None,
                      shadow_s: float = 0.0, shadow_proportion: float = 1.0) -> dict[str, Any]:
        """Move ``endpoint_name`` to ``backend_tag`` step by step, each step guarded by the
        canary's own figures (README, "Progressive rollouts"). Returns the rollout."""
        rollout = self._call("start_rollout", endpoint_name, backend_tag, list(steps), interval_s,
                             dict(guards) if guards is not None else None, shadow_s, shadow_proportion)
        self._confirm_endpoint(endpoint_name)
        return rollout

    def _confirm_endpoint(self, endpoint_name: str) -> None:
        """After a rollout call moved the endpoint's traffic: every proxy serves it."""
        if self.read_your_writes:
            self._confirm(self._call("snapshot_ids", [keys.endpoint(endpoint_name)]))

    def get_rollout(self, endpoint_name: str) -> dict[str, Any]:
        """endpoint, backend, source, state, step, weight, steps, reason, history, ..."""
        return self._call("get_rollout", endpoint_name)

    def wait_for_rollout(self, endpoint_name: str, timeout_s: float = 600.0) -> dict[str, Any]:
        """Block until the rollout reaches a final state (or ``timeout_s``); returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            rollout = self._call("wait_for_rollout", endpoint_name, max(0.0, min(remaining, 10.0)),
                                 timeout_s=max(remaining, 0.0) + 15.0)
            if rollout["state"] in ("succeeded", "rolled_back", "aborted") or remaining <= 0:
                return rollout

    def pause_rollout(self, endpoint_name: str) -> dict[str, Any]:
        return self._call("pause_rollout", endpoint_name)

    def resume_rollout(self, endpoint_name: str) -> dict[str, Any]:
        rollout = self._call("resume_rollout", endpoint_name)
        self._confirm_endpoint(endpoint_name)
        return rollout

    def abort_rollout(self, endpoint_name: str) -> dict[str, Any]:
        """Back to the source traffic now; state ``aborted``."""
        rollout = self._call("abort_rollout", endpoint_name)
        self._confirm_endpoint(endpoint_name)
        return rollout

    # -- data path ---------------------------------------------------------------------
    def get_handle(self, endpoint_name: str) -> Any:
        from serveplane.router import get_handle

        endpoints = self.list_endpoints()
        if endpoint_name not in endpoints:
            from serveplane.exceptions import EndpointNotFoundError

            raise EndpointNotFoundError(
                f"endpoint {endpoint_name!r} does not exist; known endpoints: "
                f"{', '.join(sorted(endpoints)) or 'none'}")
        return get_handle(endpoint_name, CONTROLLER_NAME, self._namespace)

    def start_session(self) -> str:
        """A new session id; pass it with ``handle.options(session_id=...)``."""
        return uuid.uuid4().hex

    def terminate_session(self, session_id: str) -> None:
        from serveplane.router import end_session

        end_session(session_id)

    # -- metrics -----------------------------------------------------------------------
    def get_metrics(self) -> dict[str, Any]:
        """Service-level, per-replica and shadow figures (see README, "Metrics")."""
        return self._call("get_metrics")

    def get_metrics_summary(self) -> dict[str, Any]:
        """The service-level figures only."""
        return self.get_metrics()["service"]

    def get_metrics_prometheus(self) -> str:
        from serveplane.metrics import render_prometheus

        metrics = self.get_metrics()
        backends_to_endpoints: dict[str, list[str]] = {}
        for endpoint, backends in metrics.get("endpoints", {}).items():
            for backend in backends:
                backends_to_endpoints.setdefault(backend, []).append(endpoint)
        return render_prometheus(metrics, backends_to_endpoints)

    # -- status, lifecycle -------------------------------------------------------------
    def get_status(self) -> dict[str, Any]:
        return self._call("get_status")

    def restart_controller(self, after_epoch: int, timeout_s: float = 120.0) -> dict[str, Any]:
        """Restart the controller actor (Ray re-creates it from the arguments it was started
        with: same store, same state key) and wait until the new one serves, with an epoch
        above ``after_epoch``; returns its status. Replicas and proxies keep serving."""
        ray.kill(self._controller, no_restart=False)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ControllerUnavailableError(
                    f"controller {CONTROLLER_NAME!r} of namespace {self._namespace!r} did not come "
                    f"back within {timeout_s:.0f}s; check `ray list actors` and its logs")
            status = self._call("get_status", timeout_s=remaining)
            if status["epoch"] > after_epoch:
                return status
            time.sleep(0.1)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        try:
            self._call("shutdown", timeout_s=30.0)
        except ServeplaneError as exc:
            logger.warning("controller shutdown failed: %s", exc)
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") == self._namespace and entry["name"].startswith("serveplane_proxy:"):
                try:
                    ray.kill(ray.get_actor(entry["name"], namespace=self._namespace), no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        try:
            ray.kill(self._controller, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        from serveplane.router import drop_routers

        drop_routers(CONTROLLER_NAME, self._namespace)
        from serveplane.long_poll import LongPollClient

        LongPollClient.stop_shared(CONTROLLER_NAME, self._namespace)  # never another namespace's
        self._shutdown = True


def _convention(value: RequestConvention | str) -> RequestConvention:
    try:
        return RequestConvention(value)
    except ValueError:
        raise InvalidConfigError(
            f"request_convention is {value!r}; use 'native' (arguments passed straight through) "
            "or 'classic' (one request object per call, as Ray Serve 1.x)") from None


def _router_arg(router: Any) -> tuple[str | None, bytes | None]:
    if router is None or isinstance(router, str):
        return router, None
    if inspect.isclass(router) and callable(getattr(router, "choose", None)):
        return None, cloudpickle.dumps(router)
    raise InvalidConfigError(
        f"router {router!r} is invalid; give a policy name or a subclass of serveplane.Router "
        "with choose(replicas, request)")
