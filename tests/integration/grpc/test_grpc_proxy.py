"""A real grpcio client against the gRPC proxy on 127.0.0.1: routing, splits, shadows,
sessions, shard keys, every status code, health and reflection; the proxy serves after each."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest
import ray

from tests.integration.grpc import echo_pb2, echo_pb2_grpc
from tests.integration.grpc.backends import Echo
from tests.integration.grpc.conftest import grpc_instance, wait_for

pytestmark = [pytest.mark.ray]

Req = echo_pb2.EchoRequest
ECHO = [("endpoint", "echo")]


def say(inst, text="hi", metadata=(), timeout=10.0, **fields):
    return echo_pb2_grpc.EchoStub(inst.channel).Say(Req(text=text, **fields), timeout=timeout,
                                                     metadata=list(metadata))


def assert_serving(inst):
    reply = say(inst, "still there", ECHO)
    assert reply.text == "still there" and reply.backend in ("a", "b")


def status_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def counters(inst, endpoint: str) -> dict[str, int]:
    return inst.client.get_handle(endpoint).options(method_name="counters").remote().result(timeout=10)


def test_unary_by_method_and_by_endpoint_metadata(instance):
    assert instance.client.grpc_addresses == [instance.address]
    reply = say(instance, "hello")                    # no metadata: the one endpoint defining Say
    assert (reply.text, reply.backend) == ("hello", "a")
    assert say(instance, "x", ECHO).backend == "a"
    other = echo_pb2_grpc.OtherStub(instance.channel).Ping(Req(text="p"), timeout=10)
    assert (other.text, other.backend) == ("pong:p", "other")
    stats = instance.statistics()
    assert stats["answered"]["OK"] >= 3 and stats["in_flight"] == 0


def test_weighted_split_and_shadow(instance):
    client = instance.client
    client.set_traffic("echo", {"echo:a": 0.5, "echo:b": 0.5})
    try:
        seen = [say(instance, str(i), ECHO).backend for i in range(200)]
        assert 60 <= seen.count("a") <= 140 and seen.count("a") + seen.count("b") == 200, seen
        client.set_traffic("echo", {"echo:a": 1.0})
        client.create_endpoint("probe-b", backend="echo:b")   # reads b's counters
        before = counters(instance, "probe-b")["calls"]
        client.shadow_traffic("echo", "echo:b", 1.0)
        assert {say(instance, str(i), ECHO).backend for i in range(50)} == {"a"}
        wait_for(lambda: counters(instance, "probe-b")["calls"] >= before + 50, what="50 shadow calls on b")
    finally:
        client.shadow_traffic("echo", "echo:b", 0)
        client.set_traffic("echo", {"echo:a": 1.0})
        client.delete_endpoint("probe-b")
    assert_serving(instance)


def test_sessions_and_shard_keys(instance):
    replies = [say(instance, "s", [*ECHO, ("session-id", "session-1")]) for _ in range(20)]
    assert {r.pid for r in replies} == {replies[0].pid} and replies[0].session == "session-1"
    instance.client.set_traffic("echo", {"echo:a": 0.5, "echo:b": 0.5})
    try:
        for key in ("k1", "k2"):
            assert len({say(instance, key, [*ECHO, ("shard-key", key)]).backend for _ in range(10)}) == 1
        by_key = {say(instance, "k", [*ECHO, ("shard-key", f"key-{i}")]).backend for i in range(30)}
        assert by_key == {"a", "b"}
    finally:
        instance.client.set_traffic("echo", {"echo:a": 1.0})


@pytest.mark.parametrize("metadata, method, code, detail", [
    ([("endpoint", "nope")], "Say", grpc.StatusCode.NOT_FOUND, "no endpoint named 'nope'"),
    ([("endpoint", "other")], "Say", grpc.StatusCode.NOT_FOUND, "endpoint 'other' has no method 'Say'"),
    (ECHO, "_hidden", grpc.StatusCode.NOT_FOUND, "is never served"),
    ([], "Upload", grpc.StatusCode.UNIMPLEMENTED, "streams its requests"),
], ids=["unknown-endpoint", "method-not-on-endpoint", "private-method", "client-streaming"])
def test_not_found_and_unimplemented(instance, metadata, method, code, detail):
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    if method == "Upload":
        error = status_of(lambda: stub.Upload(iter([Req()]), timeout=10, metadata=metadata))
    else:
        error = status_of(lambda: getattr(stub, method)(Req(), timeout=10, metadata=metadata))
    assert error.code() == code and detail in error.details()
    assert_serving(instance)


def test_unknown_service_method_is_not_found(instance):
    call = instance.channel.unary_unary("/nope.Service/Do", request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
    error = status_of(lambda: call(b"", timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "/nope.Service/Do" in error.details()
    assert_serving(instance)


def test_ambiguous_method_needs_the_endpoint(instance):
    instance.client.create_endpoint("echo-2", backend="echo:b")
    try:
        error = status_of(lambda: say(instance, "x"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "served by endpoints echo, echo-2" in error.details()
        assert say(instance, "x", [("endpoint", "echo-2")]).backend == "b"
    finally:
        instance.client.delete_endpoint("echo-2")
    assert say(instance, "x").backend == "a"   # the delete is served when the call returns


def test_user_exception_is_internal_with_an_error_id_only(instance):
    error = status_of(lambda: say(instance, "x", ECHO, fail=True))
    assert error.code() == grpc.StatusCode.INTERNAL
    error_id = dict(error.trailing_metadata())["error-id"]
    assert error.details() == f"internal error; the server logged it as error {error_id}"
    assert "secret" not in error.details()
    assert_serving(instance)


def test_back_pressure_is_resource_exhausted_with_retry_after(instance):
    client = instance.client
    client.create_backend("full", Echo, "full", config={"max_concurrent_queries": 1, "max_queued_requests": 0})
    client.create_endpoint("full", backend="full")
    try:
        stub = echo_pb2_grpc.EchoStub(instance.channel)
        # a stream whose first chunk arrived holds the replica's only slot
        busy = stub.Count(Req(text="busy", n=1000, sleep_s=0.02), timeout=60, metadata=[("endpoint", "full")])
        assert next(busy).index == 0
        error = status_of(lambda: stub.Say(Req(text="more"), timeout=10, metadata=[("endpoint", "full")]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at capacity" in error.details()
        assert dict(error.trailing_metadata())["retry-after"] == "1"
        busy.cancel()
        wait_for(lambda: _succeeds(lambda: stub.Say(Req(text="x"), timeout=10, metadata=[("endpoint", "full")])),
                 what="the slot free again")
    finally:
        client.delete_endpoint("full")
        client.delete_backend("full")
    assert_serving(instance)


def test_deadline_is_deadline_exceeded(instance):
    started = time.monotonic()
    error = status_of(lambda: say(instance, "slow", ECHO, timeout=0.5, sleep_s=5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    assert_serving(instance)


def test_health_and_reflection(instance):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(instance.channel)
    for service in ("", "serveplane.test.Echo", "serveplane.test.Other"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status \
            == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(instance.channel)
    answers = list(reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"serveplane.test.Echo", "serveplane.test.Other", "grpc.health.v1.Health"} <= names


KEY = "grpc-test-key-0123456789"


def test_api_keys_rate_limit_and_in_flight_bound(ray_session):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc_instance(api_keys=[KEY], rate_limit_rps=2, rate_limit_burst=4, location="EveryNode",
                       max_concurrent_requests=1) as inst:
        assert len(inst.client.grpc_addresses) == len([n for n in ray.nodes() if n["Alive"]])  # one per node
        inst.client.create_backend("echo:a", Echo, "a")
        inst.client.create_endpoint("echo", backend="echo:a")
        stub = echo_pb2_grpc.EchoStub(inst.channel)
        good = [("authorization", f"Bearer {KEY}")]
        for metadata in ([], [("authorization", "Bearer wrong-key-0123456789")], [("authorization", KEY)]):
            error = status_of(lambda: stub.Say(Req(text="x"), timeout=10, metadata=metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in error.details()
        assert health_pb2_grpc.HealthStub(inst.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(inst.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        error = status_of(lambda: list(reflection.ServerReflectionInfo(iter([request]), timeout=10)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert list(reflection.ServerReflectionInfo(iter([request]), timeout=10, metadata=good))
        assert stub.Say(Req(text="ok"), timeout=10, metadata=good).text == "ok"

        busy = stub.Say.future(Req(text="busy", sleep_s=2), timeout=20, metadata=good)
        wait_for(lambda: inst.statistics()["in_flight"] == 1, what="one call in flight")
        error = status_of(lambda: stub.Say(Req(text="x"), timeout=10, metadata=good))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_requests=1" in error.details()
        assert busy.result(timeout=20).text == "busy"

        codes = []
        for _ in range(8):  # 2 tokens a second, 4 at most: a quick burst runs dry
            try:
                stub.Say(Req(text="r"), timeout=10, metadata=good)
                codes.append("OK")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in exc.details()
                assert int(dict(exc.trailing_metadata())["retry-after"]) >= 1
                codes.append("LIMITED")
        assert "LIMITED" in codes
        wait_for(lambda: _succeeds(lambda: stub.Say(Req(text="again"), timeout=10, metadata=good)),
                 what="the bucket refilled")


def _succeeds(call) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def test_bad_servicer_function_is_refused_before_serving(ray_session):
    import uuid

    import serveplane
    from serveplane.exceptions import InvalidConfigError

    ns = f"g-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(InvalidConfigError, match="cannot import 'tests.no_such_module'"):
            serveplane.start(kv_store=f"ray://{ns}", namespace=ns, grpc_options={
                "port": 0, "servicer_functions": ["tests.no_such_module.add_XServicer_to_server"]})
    finally:
        serveplane.connect(ns).shutdown()


def test_concurrent_unary_calls(instance):
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda i: stub.Say(Req(text=str(i)), timeout=20, metadata=ECHO).text, range(200)))
    assert texts == [str(i) for i in range(200)]
