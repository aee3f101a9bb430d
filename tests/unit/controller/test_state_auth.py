"""The controller loads only state that authenticates under its key: whatever an attacker
who can write the store (but does not hold the key) plants is refused, never sent to a
replica or a router, and reported; nothing that might be legitimate state is destroyed."""

from __future__ import annotations

import uuid

import pytest

from serveplane.backend_state.fake import FakeActorDirectory, FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.controller.persistence import inline_runner
from serveplane.exceptions import InvalidConfigError
from serveplane.kv_store import StateKey, open_store
from tests.attacker import evil_pickle, plant_blob, rewrite_record
from tests.conftest import TEST_KEY
from tests.unit.controller.test_controller_unit import run, step, step_until_done

NS = "serveplane/unit"


@pytest.fixture
def url():
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    FakeReplicaActorWrapper.start_error = None
    return f"memory://{uuid.uuid4().hex}"


def controller(url: str, directory: FakeActorDirectory | None = None, key: StateKey = TEST_KEY) -> ServeController:
    return ServeController(url, "unit", wrapper_factory=lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True),
                           run_loop=False, run_io=inline_runner, run_ray=inline_runner,
                           actors=directory or FakeActorDirectory(), state_key=key)


def started_code() -> list[bytes]:
    return [w.spec.code_blob for w in FakeReplicaActorWrapper.registry.values() if w.started]


def test_a_rewritten_record_is_refused_reported_and_its_replicas_kept(url, tmp_path):
    first = controller(url)
    step_until_done(first, run(first.create_backend("m", b"code", b"init", {}, {"num_replicas": 1})))
    evil = evil_pickle(str(tmp_path / "ran"))
    store = open_store(url)
    digest = plant_blob(store, NS, evil)
    rewrite_record(store, NS, "backend/m", lambda r: r.update(code_hash=digest, version="evil", target_replicas=3))

    directory = FakeActorDirectory()
    successor = controller(url, directory)
    for t in range(12):
        step(successor, float(t))
    status = run(successor.get_status())
    assert status["backends"] == {}
    assert [r["key"] for r in status["refused"]] == [f"{NS}/records/backend/m"]
    assert status["refused"][0]["error"].startswith(
        f"checkpoint '{NS}/records/backend/m' fails authentication: it was written by the previous, "
        "unauthenticated format")
    assert status["state_key"] == {"id": TEST_KEY.id, "source": "$SERVEPLANE_STATE_KEY"}
    assert evil not in started_code()
    assert directory.killed == [], "a refused record's replicas are not orphans"
    assert store.get(f"{NS}/blob/{digest}") is not None, "no blob collection while a record is refused"

    # replacing the refused record is how an operator recovers: the refusal clears, the sweep resumes
    step_until_done(successor, run(successor.create_backend("m", b"code", b"init", {}, {"num_replicas": 1})),
                    start=20.0)
    assert run(successor.get_status())["refused"] == []
    step(successor, 40.0)
    assert directory.killed == ["serveplane:m#" + FakeReplicaActorWrapper.registry[directory.killed[0]].replica_tag]
    assert evil not in started_code()


def test_a_blob_without_its_mac_is_never_sent_to_a_replica(url):
    first = controller(url)
    step_until_done(first, run(first.create_backend("m", b"code", b"init", {}, {"num_replicas": 1})))
    record = first._backends.get("m").record
    store = open_store(url)
    store.put(f"{NS}/blob/{record.code_hash}", b"code")  # the same bytes, unsealed: no MAC
    successor = controller(url)  # an empty blob cache: starts read the store
    for wrapper in list(FakeReplicaActorWrapper.registry.values()):
        wrapper.set_dead()
    FakeReplicaActorWrapper.registry.clear()
    for t in range(6):
        step(successor, float(t))
    assert started_code() == []
    status = run(successor.get_status())
    assert "fails authentication: it carries no MAC" in status["backends"]["m"]["failure"]
    assert [r["key"] for r in status["refused"]] == [f"{NS}/blob/{record.code_hash}"]


def test_an_endpoint_whose_router_fails_authentication_is_refused(url):
    first = controller(url)
    step_until_done(first, run(first.create_backend("m", b"code", b"init", {}, None)))
    router = b"pickled router"
    run(first.create_endpoint("ep", "m", "/ep", None, router_blob=router))
    run(first.create_endpoint("plain", "m", "/plain", None))
    digest = first._endpoints.get("ep").router_blob_hash
    open_store(url).put(f"{NS}/blob/{digest}", router)
    successor = controller(url)
    assert set(run(successor.list_endpoints())) == {"plain"}
    refused = run(successor.get_status())["refused"]
    assert [r["key"] for r in refused] == [f"{NS}/records/endpoint/ep"]
    assert "its custom router is refused: blob" in refused[0]["error"]
    assert successor._long_poll.get("endpoint:ep") is None or successor._long_poll.get("endpoint:ep").value is None


def test_a_controller_under_another_key_refuses_everything_and_destroys_nothing(url):
    first = controller(url)
    step_until_done(first, run(first.create_backend("m", b"code", b"init", {}, {"num_replicas": 2})))
    directory = FakeActorDirectory()
    other = controller(url, directory, key=StateKey("another-key-0123456789abcdefghijklm", "file /x"))
    for t in range(12):
        step(other, float(t))
    status = run(other.get_status())
    assert status["backends"] == {} and len(status["refused"]) >= 2  # the backend and its goal outcome
    assert all("fails authentication under state key" in r["error"] and "(file /x)" in r["error"]
               for r in status["refused"])
    assert directory.killed == [] and len(open_store(url).list(f"{NS}/blob/")) == 2


def test_the_controller_needs_a_state_key(url):
    with pytest.raises(InvalidConfigError, match="the controller needs the state key"):
        ServeController(url, "unit", run_loop=False, run_io=inline_runner, run_ray=inline_runner,
                        actors=FakeActorDirectory())


def test_shutdown_forgets_refused_records_and_unnamed_blobs_too(url, tmp_path):
    first = controller(url)
    step_until_done(first, run(first.create_backend("m", b"code", b"init", {}, {"num_replicas": 1})))
    store = open_store(url)
    digest = plant_blob(store, NS, evil_pickle(str(tmp_path / "ran")))
    rewrite_record(store, NS, "backend/m", lambda r: r.update(code_hash=digest))
    directory = FakeActorDirectory()
    successor = controller(url, directory)
    run(successor.shutdown())
    assert store.list(f"{NS}/records/") == store.list(f"{NS}/backup/") == store.list(f"{NS}/blob/") == []
    assert len(directory.killed) == 1  # shutdown stops every replica, a refused backend's too
