from __future__ import annotations

import pytest

from serveplane.config import (
    AutoscalingConfig,
    BackendConfig,
    parse_backend_config,
    validate_actor_options,
)
from serveplane.exceptions import InvalidConfigError


def test_merge_replaces_only_fields_set():
    base = BackendConfig(num_replicas=2, max_concurrent_queries=7, user_config={"a": 1})
    merged = base.merged(BackendConfig(num_replicas=3))
    assert merged.num_replicas == 3 and merged.max_concurrent_queries == 7
    assert merged.user_config == {"a": 1}
    from_dict = base.merged(parse_backend_config({"user_config": {"a": 2}}))
    assert from_dict.num_replicas == 2 and from_dict.user_config == {"a": 2}


def test_dict_config_errors_name_the_field():
    with pytest.raises(InvalidConfigError, match="num_replicas"):
        parse_backend_config({"num_replicas": -1})
    with pytest.raises(InvalidConfigError, match="bogus"):
        parse_backend_config({"bogus": 1})


@pytest.mark.parametrize("options, match", [
    ({"name": "x"}, "sets name; the controller owns"),
    ({"lifetime": "detached", "max_restarts": 3}, "lifetime, max_restarts"),
    ({"num_gpus": -1}, "num_gpus.*must be a number >= 0"),
    ({"colour": "red"}, "unknown option"),
], ids=["name", "lifetime", "negative-gpus", "unknown"])
def test_actor_options_rules(options, match):
    with pytest.raises(InvalidConfigError, match=match):
        validate_actor_options(options)


def test_actor_options_pass_through():
    opts = {"num_gpus": 0.5, "num_cpus": 0, "resources": {"tpu": 1}, "runtime_env": {"env_vars": {"A": "1"}}}
    assert validate_actor_options(opts) == opts


def test_autoscaling_defaults_and_bounds():
    a = AutoscalingConfig()
    assert (a.scale_up_queue_depth_threshold, a.scale_down_cooldown, a.min_healthy_replicas_ratio) == (5.0, 120.0, 0.5)
    with pytest.raises(ValueError, match="min_replicas \\(3\\) is greater than max_replicas \\(2\\)"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    cfg = BackendConfig(num_replicas=5, autoscaling_config=AutoscalingConfig(min_replicas=0, max_replicas=3))
    assert cfg.initial_replicas() == 3
