"""The gRPC example as its README section says: its YAML applied, its generated code served,
its client snippet run against the proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from serveplane.apply import apply
from serveplane.deploy_config import load_config
from tests.conftest import ROOT
from tests.integration.grpc.conftest import grpc_instance

pytestmark = [pytest.mark.ray]

EXAMPLE = ROOT / "examples" / "grpc"


def test_the_example_serves_and_its_client_runs(ray_session, capsys):
    config = load_config(EXAMPLE / "grpc.yaml")
    assert config.grpc is not None and config.grpc.port == 9000
    with grpc_instance(servicer_functions=config.grpc.servicer_functions) as inst:
        apply(inst.client, config, Path(EXAMPLE))
        from examples.grpc.client import main

        lines = main(inst.address)
    assert lines[0].startswith("positive 0.25 from v")
    assert lines[1:5] == ["what: neutral", "a: neutral", "great: positive", "movie: neutral"]
    assert lines[5] == "NOT_FOUND: no endpoint named 'nope'"
