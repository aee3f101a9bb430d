"""``start`` and ``connect``: find or create the controller actor."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from serveplane import tracing
from serveplane.client import Client
from pydantic import ValidationError

from serveplane.config import GRPCOptions, HTTPOptions, explain_validation_error
from serveplane.controller.controller import ServeController
from serveplane.exceptions import ControllerUnavailableError, InvalidConfigError
from serveplane.proxy_actors import place_proxies
from serveplane.records import CONTROLLER_NAME, DEFAULT_NAMESPACE
from serveplane.state_key import resolve_state_key

logger = logging.getLogger(__name__)

DEFAULT_KV_STORE = "ray://serveplane"


def start(detached: bool = True, http_options: HTTPOptions | Mapping[str, Any] | None = None,
          kv_store: str = DEFAULT_KV_STORE, namespace: str = DEFAULT_NAMESPACE,
          state_key_file: str | os.PathLike[str] | None = None,
          grpc_options: GRPCOptions | Mapping[str, Any] | None = None) -> Client:
    """Start the controller (or attach to the running one) and return a ``Client``.

    A new controller gets the state key that authenticates its store: ``$SERVEPLANE_STATE_KEY``,
    else ``state_key_file``, else the default key file (created 0600 on first start; see
    ``serveplane.state_key``). Attaching to a running controller needs no key.
    Calls ``ray.init()`` when Ray is not initialized yet. ``grpc_options`` also starts the
    gRPC proxy (``serveplane.grpc``; needs ``pip install 'serveplane[grpc]'``).
    """
    tracing.refresh()  # OpenTelemetry may have been configured after serveplane was imported
    options = None
    if http_options is not None:
        try:
            options = HTTPOptions.model_validate(
                dict(http_options) if isinstance(http_options, Mapping) else http_options.model_dump())
        except ValidationError as exc:
            raise InvalidConfigError(f"invalid http_options: {explain_validation_error(exc)}") from None
    grpc = None
    if grpc_options is not None:
        try:
            grpc = GRPCOptions.model_validate(
                dict(grpc_options) if isinstance(grpc_options, Mapping) else grpc_options.model_dump())
        except ValidationError as exc:
            raise InvalidConfigError(f"invalid grpc_options: {explain_validation_error(exc)}") from None
        if grpc.location != "NoServer":
            from serveplane.grpc import require_grpc

            require_grpc()  # before anything starts
    if not isinstance(kv_store, str):
        raise InvalidConfigError(
            f"kv_store is a {type(kv_store).__name__}; give a URL such as 'ray://serveplane'")
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    controller: Any
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
        logger.info("attached to the running serveplane controller in namespace %r", namespace)
    except ValueError:
        state_key = resolve_state_key(state_key_file)
        node_id = ray.get_runtime_context().get_node_id()
        controller = ray.remote(ServeController).options(
            name=CONTROLLER_NAME, namespace=namespace, get_if_exists=True,
            lifetime="detached" if detached else None, max_restarts=-1, max_task_retries=0,
            max_concurrency=10_000, num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True),
        ).remote(kv_store, namespace, None, state_key=state_key)
    client = Client(controller, namespace, detached)
    client._call("ping", timeout_s=120.0)
    if options is not None and options.location != "NoServer":
        # keep the handles: a non-detached actor dies with its owner's last reference
        client.http_urls, client._proxies = start_proxies(options, namespace, detached)
    if grpc is not None and grpc.location != "NoServer":
        from serveplane.grpc.start import start_grpc_proxies

        client.grpc_addresses, grpc_proxies = start_grpc_proxies(grpc, namespace, detached)
        client._proxies = [*client._proxies, *grpc_proxies]
    return client


def proxy_name(node_id: str) -> str:
    return f"serveplane_proxy:{node_id}"


def start_proxies(options: HTTPOptions, namespace: str, detached: bool) -> tuple[list[str], list[Any]]:
    """One proxy on this node (``HeadOnly``) or one per alive node (``EveryNode``)."""
    from serveplane.http.proxy import HTTPProxyActor

    proxies = place_proxies(HTTPProxyActor, proxy_name, options.location, options.model_dump(),
                            namespace, detached)
    return ray.get([p.ready.remote() for p in proxies], timeout=60), proxies


def connect(namespace: str | None = None) -> Client:
    """Attach to the running controller from any process of the cluster: by default the
    instance of the backend this code runs in, else the default namespace."""
    tracing.refresh()
    if namespace is None:
        from serveplane.context import get_replica_context

        replica = get_replica_context()
        namespace = replica.namespace if replica is not None and replica.namespace else DEFAULT_NAMESPACE
    if not ray.is_initialized():
        ray.init(address="auto", logging_level=logging.WARNING)
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    except ValueError:
        raise ControllerUnavailableError(
            f"no serveplane controller is running in namespace {namespace!r}; call "
            "serveplane.start() first") from None
    return Client(controller, namespace)
