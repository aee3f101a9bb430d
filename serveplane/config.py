"""Pydantic models for every config and persisted record.

Invariant: a model instance is always valid; bad values raise ``InvalidConfigError``
(a ``ValueError``) naming the field and the rule before anything changes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from serveplane.exceptions import InvalidConfigError
from serveplane.exposure import check_http_methods

ROUTER_NAMES = ("round_robin", "least_loaded", "power_of_two", "consistent_hash")

# Actor options the controller sets itself; users may not override them.
CONTROLLER_OWNED_ACTOR_OPTIONS = frozenset(
    {"name", "namespace", "lifetime", "max_restarts", "max_task_retries", "placement_group",
     "placement_group_bundle_index", "placement_group_capture_child_tasks",
     "scheduling_strategy", "get_if_exists", "max_concurrency"}
)
ALLOWED_ACTOR_OPTIONS = frozenset(
    {"num_cpus", "num_gpus", "memory", "resources", "runtime_env", "accelerator_type",
     "object_store_memory", "label_selector"}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class AutoscalingConfig(_Model):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(10, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    scale_up_queue_depth_threshold: float = Field(5.0, ge=0)
    scale_up_capacity_threshold: float = Field(0.8, ge=0)
    scale_up_request_rate_threshold: float = Field(10.0, ge=0)
    scale_down_capacity_threshold: float = Field(0.3, ge=0)
    scale_down_queue_depth_threshold: float = Field(1.0, ge=0)
    scale_down_idle_time_threshold: float = Field(300.0, ge=0)
    min_time_between_scale_events: float = Field(60.0, ge=0)
    scale_up_cooldown: float = Field(30.0, ge=0)
    scale_down_cooldown: float = Field(120.0, ge=0)
    scale_up_step_size: int = Field(1, ge=1)
    scale_down_step_size: int = Field(1, ge=1)
    max_queue_depth_emergency: float = Field(20.0, ge=0)
    min_healthy_replicas_ratio: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is greater than max_replicas "
                f"({self.max_replicas}); min_replicas must be <= max_replicas")
        if self.initial_replicas is not None and not (
                self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie within "
                f"[min_replicas={self.min_replicas}, max_replicas={self.max_replicas}]")
        return self


class BackendConfig(_Model):
    """How a backend runs: replica count, concurrency, batching, retries, health."""

    num_replicas: int = Field(1, ge=0)
    user_config: Any = None
    max_concurrent_queries: int = Field(100, ge=1)
    max_queued_requests: int = Field(10_000, ge=0)
    max_batch_size: int | None = Field(None, ge=1)
    batch_wait_timeout: float = Field(0.0, ge=0)
    max_retries: int = Field(3, ge=0)
    idempotent: bool = True
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    health_check_failure_threshold: int = Field(3, ge=1)
    startup_timeout_s: float = Field(600.0, gt=0)
    autoscaling_config: AutoscalingConfig | None = None
    # methods an HTTP request may call besides __call__ (X-SERVE-CALL-METHOD); see
    # serveplane/exposure.py
    http_methods: list[str] | None = None

    @field_validator("http_methods")
    @classmethod
    def _http_methods(cls, v: list[str] | None) -> list[str] | None:
        return check_http_methods(v)

    @field_validator("user_config")
    @classmethod
    def _json_user_config(cls, v: Any) -> Any:
        try:
            json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"user_config is not JSON-serializable ({exc}); use dicts, lists, "
                             "strings and numbers") from None
        return v

    def merged(self, update: BackendConfig) -> BackendConfig:
        """This config with only the fields explicitly set on ``update`` replaced."""
        data = self.model_dump()
        for name in update.model_fields_set:
            value = getattr(update, name)
            data[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return BackendConfig.model_validate(data)

    def initial_replicas(self) -> int:
        auto = self.autoscaling_config
        if auto is None:
            return self.num_replicas
        if auto.initial_replicas is not None:
            return auto.initial_replicas
        return max(auto.min_replicas, min(self.num_replicas, auto.max_replicas))


MIN_API_KEY_LENGTH = 16
DEFAULT_MAX_BUFFERED_BODY_BYTES = 512 * 1024 * 1024
# fields whose values are secrets: validation errors never quote them
SECRET_FIELDS = frozenset({"api_keys"})


def check_tls_fields(options: Any) -> None:
    """The TLS fields of an ingress: certificate and key together; client CAs only with them.
    (The files are read by the proxy, on its node, when it starts.)"""
    if bool(options.ssl_certfile) != bool(options.ssl_keyfile):
        given, missing = ("ssl_certfile", "ssl_keyfile") if options.ssl_certfile else ("ssl_keyfile", "ssl_certfile")
        raise ValueError(f"{given} is set but {missing} is not; TLS needs both (PEM files), or neither")
    if options.ssl_ca_certs and not options.ssl_certfile:
        raise ValueError("ssl_ca_certs (mutual TLS) is set without ssl_certfile and ssl_keyfile; "
                         "the server needs its own certificate first")


class HTTPOptions(_Model):
    """The HTTP proxy: where it listens, what it accepts, and the bounds that keep it up.

    Security (see the README's "Security model"): with ``api_keys`` or ``api_keys_file``
    every request but ``/-/healthz`` needs ``Authorization: Bearer <key>`` (401 otherwise);
    ``rate_limit_rps`` is a token bucket per key (per client address without keys), 429 past
    it. At most ``max_concurrent_requests`` requests are in flight (503 past it), a body must
    arrive within ``body_read_timeout_s`` (408) and the bodies held at once never exceed
    ``max_buffered_body_bytes`` (503; a body is reserved as its bytes arrive, never by its
    declared length), so memory stays bounded under many large or slow uploads. A request
    head must arrive whole within ``request_head_timeout_s`` (408), and at most
    ``max_connections`` connections are open, ``max_connections_per_client`` from one client
    address (503 with ``Retry-After`` past either). A 500 carries an error id only (the exception is in the proxy's log under it)
    unless ``debug_errors``.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    location: str = "HeadOnly"
    max_body_bytes: int = Field(100 * 1024 * 1024, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    debug_errors: bool = False
    api_keys: list[SecretStr] | None = None
    api_keys_file: str | None = None
    rate_limit_rps: float | None = Field(None, gt=0)
    rate_limit_burst: int | None = Field(None, ge=1)
    max_concurrent_requests: int = Field(256, ge=1)
    body_read_timeout_s: float = Field(30.0, gt=0)
    max_buffered_body_bytes: int | None = Field(None, ge=1)
    request_head_timeout_s: float = Field(10.0, gt=0)   # request line and headers, whole (408)
    max_connections: int = Field(2048, ge=1)            # open at once, all clients (503)
    max_connections_per_client: int = Field(256, ge=1)  # open at once, one client address (503)
    ssl_certfile: str | None = None   # PEM certificate (chain): serve HTTPS only
    ssl_keyfile: str | None = None    # PEM private key of ssl_certfile
    ssl_ca_certs: str | None = None   # PEM client CAs: mutual TLS, a client certificate required

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        if v not in ("HeadOnly", "EveryNode", "NoServer"):
            raise ValueError(f"location {v!r} is not one of 'HeadOnly', 'EveryNode', 'NoServer'")
        return v

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: list[SecretStr] | None) -> list[SecretStr] | None:
        for i, key in enumerate(v or ()):
            why = api_key_problem(key.get_secret_value())
            if why is not None:
                raise ValueError(f"api_keys[{i}] {why}")  # never the key itself
        return v

    @model_validator(mode="after")
    def _bounds(self) -> HTTPOptions:
        if self.rate_limit_burst is not None and self.rate_limit_rps is None:
            raise ValueError("rate_limit_burst is set but rate_limit_rps is not; set both, or neither")
        check_tls_fields(self)
        if self.max_buffered_body_bytes is not None and self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_buffered_body_bytes ({self.max_buffered_body_bytes}) is less than max_body_bytes "
                f"({self.max_body_bytes}); one body must fit: raise it, or leave it out")
        return self

    @property
    def buffered_body_budget(self) -> int:
        """What all bodies held at once may total: max_buffered_body_bytes, else 512 MiB (or
        max_body_bytes when larger)."""
        if self.max_buffered_body_bytes is not None:
            return self.max_buffered_body_bytes
        return max(DEFAULT_MAX_BUFFERED_BODY_BYTES, self.max_body_bytes)

    @property
    def burst(self) -> int:
        """Tokens a rate-limit bucket holds: rate_limit_burst, else one second's worth."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1, math.ceil(self.rate_limit_rps or 1))


class GRPCOptions(_Model):
    """The gRPC proxy (``serveplane/grpc/``): where it listens, which services it serves, and
    the same security and bounds as ``HTTPOptions``.

    ``servicer_functions`` are import paths of the ``add_<Service>Servicer_to_server``
    functions that ``grpcio-tools`` generates (``"mypkg.predict_pb2_grpc.add_PredictorServicer_to_server"``,
    or ``module:attribute``); they, and the message modules they import, must be importable
    by the proxy and by the replicas (an installed package, or the job's working directory).
    With ``api_keys``/``api_keys_file`` every RPC but ``grpc.health.v1.Health`` needs the
    metadata ``authorization: Bearer <key>`` (UNAUTHENTICATED otherwise).
    """

    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    servicer_functions: list[str] = Field(default_factory=list)
    location: str = "HeadOnly"
    request_timeout_s: float = Field(60.0, gt=0)     # the deadline of a call that sets none
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1)
    debug_errors: bool = False
    api_keys: list[SecretStr] | None = None
    api_keys_file: str | None = None
    rate_limit_rps: float | None = Field(None, gt=0)
    rate_limit_burst: int | None = Field(None, ge=1)
    max_concurrent_requests: int = Field(256, ge=1)
    request_head_timeout_s: float = Field(10.0, gt=0)   # a connection's TLS and HTTP/2 handshake
    max_streams_per_connection: int = Field(100, ge=1)  # concurrent RPCs one connection may open
    ssl_certfile: str | None = None   # as for HTTPOptions: TLS only, and with ssl_ca_certs mutual TLS
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None

    @model_validator(mode="after")
    def _tls(self) -> GRPCOptions:
        check_tls_fields(self)
        return self

    @field_validator("servicer_functions")
    @classmethod
    def _servicer_functions(cls, v: list[str]) -> list[str]:
        for path in v:
            module, _, attr = path.replace(":", ".").rpartition(".")
            if not module or not attr.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
                raise ValueError(f"servicer function {path!r} is not an import path; give "
                                 "'package.module_pb2_grpc.add_<Service>Servicer_to_server'")
        return v

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        return HTTPOptions._location(v)  # the same rule as HTTP's

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: list[SecretStr] | None) -> list[SecretStr] | None:
        return HTTPOptions._api_keys(v)

    @model_validator(mode="after")
    def _bounds(self) -> GRPCOptions:
        if self.rate_limit_burst is not None and self.rate_limit_rps is None:
            raise ValueError("rate_limit_burst is set but rate_limit_rps is not; set both, or neither")
        return self

    @property
    def burst(self) -> int:
        """Tokens a rate-limit bucket holds: rate_limit_burst, else one second's worth."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1, math.ceil(self.rate_limit_rps or 1))


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key (never quoting it), or None."""
    if len(key) < MIN_API_KEY_LENGTH:
        return (f"is {len(key)} characters; an API key has at least {MIN_API_KEY_LENGTH} (generate "
                "one with: python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if not all(33 <= ord(ch) <= 126 for ch in key):
        return "has a space, a control or a non-ASCII character; API keys are printable ASCII"
    return None


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def validate_traffic(endpoint: str, traffic: Mapping[str, float]) -> dict[str, float]:
    """Weights are finite, non-negative and sum to 1 (within 1e-6)."""
    if not isinstance(traffic, Mapping) or not traffic:
        raise InvalidConfigError(
            f"traffic for endpoint {endpoint!r} is {traffic!r}; it must be a non-empty "
            "dict of backend tag to weight")
    out: dict[str, float] = {}
    for tag, weight in traffic.items():
        if not isinstance(tag, str):
            raise InvalidConfigError(f"traffic for endpoint {endpoint!r} names backend {tag!r}; "
                                     "backend tags must be strings")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InvalidConfigError(
                f"traffic weight for backend {tag!r} of endpoint {endpoint!r} is {weight!r}; "
                "it must be a finite number")
        if weight < 0:
            raise InvalidConfigError(
                f"traffic weight for backend {tag!r} of endpoint {endpoint!r} is {_fmt(weight)}; "
                "weights must be >= 0")
        out[tag] = float(weight)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise InvalidConfigError(
            f"traffic weights for endpoint {endpoint!r} sum to {_fmt(total)}; they must sum to 1")
    return out


def validate_shadow_proportion(endpoint: str, backend: str, proportion: float) -> float:
    if isinstance(proportion, bool) or not isinstance(proportion, (int, float)) \
            or not math.isfinite(proportion) or not 0.0 <= proportion <= 1.0:
        raise InvalidConfigError(
            f"shadow proportion for backend {backend!r} of endpoint {endpoint!r} is "
            f"{proportion!r}; it must lie in [0, 1]")
    return float(proportion)


def validate_actor_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidConfigError(f"ray_actor_options is {options!r}; it must be a dict")
    owned = sorted(set(options) & CONTROLLER_OWNED_ACTOR_OPTIONS)
    if owned:
        raise InvalidConfigError(
            f"ray_actor_options sets {', '.join(owned)}; the controller owns these options, "
            "remove them")
    unknown = sorted(set(options) - ALLOWED_ACTOR_OPTIONS)
    if unknown:
        raise InvalidConfigError(
            f"ray_actor_options has unknown option(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(ALLOWED_ACTOR_OPTIONS))}")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < 0):
            raise InvalidConfigError(f"ray_actor_options[{key!r}] is {value!r}; it must be a number >= 0")
    resources = options.get("resources")
    if resources is not None and not isinstance(resources, Mapping):
        raise InvalidConfigError(f"ray_actor_options['resources'] is {resources!r}; it must be a dict")
    return dict(options)


def parse_backend_config(config: BackendConfig | Mapping[str, Any] | None) -> BackendConfig:
    """Accept a model or a dict; a dict's keys count as the fields explicitly set."""
    if config is None:
        return BackendConfig()
    if isinstance(config, BackendConfig):
        return config
    if isinstance(config, Mapping):
        try:
            return BackendConfig.model_validate(dict(config))
        except ValidationError as exc:
            raise InvalidConfigError(f"invalid backend config: {_explain(exc)}") from None
    raise InvalidConfigError(f"config is {type(config).__name__}; it must be a BackendConfig or a dict")


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        secret = bool(set(str(p) for p in err["loc"]) & SECRET_FIELDS) or not err["loc"]
        parts.append(f"{loc}: {err['msg']}" + ("" if secret else f" (got {err.get('input')!r})"))
    return "; ".join(parts)


def explain_validation_error(exc: ValidationError) -> str:
    return _explain(exc)
