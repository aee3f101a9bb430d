"""Reading generated add_*_to_server functions, GRPCOptions, the grpc: YAML key, the method
names a backend records, and the error when grpcio is missing."""

from __future__ import annotations

import sys

import pytest

from serveplane.client import method_names
from serveplane.config import GRPCOptions
from serveplane.deploy_config import load_config
from serveplane.exceptions import InvalidConfigError
from serveplane.grpc.servicer import build_handlers, read_services
from tests.integration.grpc import echo_pb2

ECHO = "tests.integration.grpc.echo_pb2_grpc.add_EchoServicer_to_server"


def test_reads_every_method_with_its_kind_and_serializers():
    specs = {s.path: s for s in read_services([ECHO, "tests.integration.grpc.echo_pb2_grpc:add_OtherServicer_to_server"])}
    assert sorted(specs) == ["/serveplane.test.Echo/Count", "/serveplane.test.Echo/Say",
                             "/serveplane.test.Echo/Upload", "/serveplane.test.Echo/_hidden",
                             "/serveplane.test.Other/Ping"]
    say, count, upload = (specs[f"/serveplane.test.Echo/{m}"] for m in ("Say", "Count", "Upload"))
    assert (say.request_streaming, say.response_streaming) == (False, False)
    assert (count.request_streaming, count.response_streaming) == (False, True)
    assert upload.request_streaming
    request = echo_pb2.EchoRequest(text="x", n=3)
    assert say.request_deserializer(request.SerializeToString()) == request
    handlers = build_handlers(list(specs.values()), lambda s: "unary", lambda s: "stream", lambda s: "other")
    assert handlers["serveplane.test.Echo"]["Say"].unary_unary == "unary"
    assert handlers["serveplane.test.Echo"]["Count"].unary_stream == "stream"
    assert handlers["serveplane.test.Echo"]["Upload"].stream_stream == "other"


@pytest.mark.parametrize("path, match", [
    ("tests.no_such_module.add_X_to_server", "cannot import 'tests.no_such_module'"),
    ("tests.integration.grpc.echo_pb2_grpc.add_Nope_to_server", "has no function 'add_Nope_to_server'"),
    ("tests.integration.grpc.echo_pb2.EchoRequest", "failed when called as add_<Service>Servicer_to_server"),
], ids=["no-module", "no-function", "not-an-add-function"])
def test_bad_servicer_functions(path, match):
    with pytest.raises(InvalidConfigError, match=match):
        read_services([path])


@pytest.mark.parametrize("options, match", [
    ({"location": "Somewhere"}, "location 'Somewhere' is not one of"),
    ({"servicer_functions": ["add_to_server"]}, "is not an import path"),
    ({"api_keys": ["short"]}, "an API key has at least 16"),
    ({"rate_limit_burst": 3}, "rate_limit_burst is set but rate_limit_rps is not"),
    ({"port": 70000}, "port"),
], ids=["location", "servicer-path", "api-key", "burst-alone", "port"])
def test_grpc_options_refused(options, match):
    with pytest.raises(ValueError, match=match):
        GRPCOptions.model_validate(options)


def test_start_refuses_bad_grpc_options_before_anything_starts():
    from serveplane.api import start

    with pytest.raises(InvalidConfigError, match="invalid grpc_options: location"):
        start(grpc_options={"location": "nowhere"}, kv_store="memory://")


def test_missing_grpcio_says_what_to_install(monkeypatch):
    from serveplane.api import start

    monkeypatch.setitem(sys.modules, "grpc_reflection.v1alpha.reflection", None)
    with pytest.raises(InvalidConfigError, match=r"missing: grpc_reflection.*pip install 'serveplane\[grpc\]'"):
        start(grpc_options={"servicer_functions": [ECHO]})


def test_serveplane_imports_without_grpcio():
    import subprocess

    code = ("import sys; sys.modules['grpc'] = None\n"
            "import serveplane, serveplane.api, serveplane.cli, serveplane.grpc.proxy, serveplane.grpc.start\n"
            "from serveplane.config import GRPCOptions; GRPCOptions(port=1)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_yaml_grpc_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"grpc: {{port: 9100, servicer_functions: [{ECHO}], location: EveryNode}}\n")
    config = load_config(path)
    assert config.grpc is not None and (config.grpc.port, config.grpc.location) == (9100, "EveryNode")
    path.write_text("grpc: {port: 9100, bogus: 1}\n")
    with pytest.raises(InvalidConfigError, match="c.yaml:1: field grpc.bogus"):
        load_config(path)


class Model:
    def __init__(self) -> None: ...
    def Predict(self, request): ...
    async def Stream(self, request):
        yield request
    def reconfigure(self, config): ...
    def check_health(self): ...
    def _private(self): ...
    limit = 3


class Callable_(Model):
    def __call__(self, request): ...


def test_method_names_a_backend_records():
    assert method_names(Model) == ["Predict", "Stream"]
    assert method_names(Callable_) == ["Predict", "Stream", "__call__"]
    assert method_names(lambda request: request) == ["__call__"]
