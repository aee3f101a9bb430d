"""The YAML config of ``serveplane run`` / ``serveplane apply``, validated by pydantic.

A bad file is refused with the file, the line and the field named; nothing is applied.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serveplane.config import BackendConfig, GRPCOptions, HTTPOptions
from serveplane.exceptions import InvalidConfigError


class BackendSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    import_path: str = Field(description="module:attribute of a function or class")
    init_args: list[Any] = Field(default_factory=list)
    init_kwargs: dict[str, Any] = Field(default_factory=dict)
    config: BackendConfig = Field(default_factory=BackendConfig)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("import_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if ":" not in v or not all(v.split(":", 1)):
            raise ValueError(f"import_path {v!r} must look like 'package.module:Attribute'")
        return v


class RolloutSpec(BaseModel):
    """``rollout:`` under an endpoint: ``apply`` starts it (see README, "Progressive rollouts")."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    steps: list[float]
    interval_s: float = 60.0
    guards: dict[str, Any] = Field(default_factory=dict)
    shadow_s: float = 0.0


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    backend: str | None = None
    route: str | None = None
    methods: list[str] = Field(default_factory=lambda: ["GET"])
    traffic: dict[str, float] | None = None
    shadows: dict[str, float] = Field(default_factory=dict)
    router: str = "round_robin"
    batch_size: int | None = None
    batch_timeout_s: float = 0.0
    rollout: RolloutSpec | None = None

    def initial_backend(self) -> str:
        if self.backend:
            return self.backend
        if self.traffic:
            return max(sorted(self.traffic), key=lambda b: self.traffic[b])  # type: ignore[index]
        raise ValueError(f"endpoint {self.name!r} needs a backend or a traffic policy")


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kv_store: str | None = None
    namespace: str | None = None
    http: HTTPOptions | None = None
    grpc: GRPCOptions | None = None     # also start the gRPC proxy (any GRPCOptions field)
    backends: list[BackendSpec] = Field(default_factory=list)
    endpoints: list[EndpointSpec] = Field(default_factory=list)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for key, value in node.value:
                if key.value == part:
                    found = (key, value)
                    break
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_config(path: str | Path) -> DeployConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InvalidConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        config = DeployConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{path}:{_line_of(node, loc) or '?'}: field {field}: {err['msg']}")
        raise InvalidConfigError("invalid config:\n  " + "\n  ".join(problems)) from None
    names = [b.name for b in config.backends]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidConfigError(f"{path}: backend name(s) {', '.join(duplicates)} appear more than once")
    for i, ep in enumerate(config.endpoints):
        used = (set(ep.traffic or {}) | set(ep.shadows) | ({ep.backend} if ep.backend else set())
                | ({ep.rollout.backend} if ep.rollout else set()))
        unknown = sorted(used - set(names))
        if unknown:
            line = _line_of(node, ("endpoints", i))
            raise InvalidConfigError(f"{path}:{line}: endpoint {ep.name!r} uses unknown backend(s) "
                                     f"{', '.join(unknown)}; define them under backends")
        try:
            ep.initial_backend()
        except ValueError as exc:
            raise InvalidConfigError(f"{path}:{_line_of(node, ('endpoints', i))}: {exc}") from None
    return config


def import_roots(base_dir: Path) -> list[Path]:
    """Where an ``import_path`` of a config file in ``base_dir`` resolves: that folder, and
    the folder that holds the outermost package containing it (so a file inside package
    ``embedding`` may say ``embedding.model:Embedder``, as an import would)."""
    roots = [base_dir]
    top = base_dir
    while (top / "__init__.py").exists() and top.parent != top:
        top = top.parent
    if top != base_dir:
        roots.append(top)
    return roots


def import_attr(import_path: str, base_dir: Path | None = None) -> Any:
    """Import ``module:attr``; the module's code is shipped to replicas by value, so the
    cluster's workers need not have it on their path."""
    import cloudpickle

    module_name, attr = import_path.split(":", 1)
    roots = import_roots(base_dir.resolve()) if base_dir is not None else []
    for root in reversed(roots):
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f"; looked in {', '.join(str(r) for r in roots)} and sys.path" if roots else ""
        raise InvalidConfigError(f"import_path {import_path!r}: cannot import {module_name!r} "
                                 f"({exc}){where}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise InvalidConfigError(f"import_path {import_path!r}: module {module_name!r} has no "
                                 f"attribute {attr!r}") from None
    if module.__name__ != "__main__":
        cloudpickle.register_pickle_by_value(module)
    return obj
