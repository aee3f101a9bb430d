"""URL dispatch, re-opening stores elsewhere, and the faults of the stores that need no Ray:
SQLite (locked, unwritable, several processes) and Redis (server stopped and restarted)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid

import cloudpickle
import pytest

from serveplane.exceptions import InvalidConfigError, InvalidInputError, KVStoreUnavailableError
from serveplane.kv_store import MemoryKVStore, RayKVStore, RedisKVStore, SQLiteKVStore, open_store
from serveplane.kv_store.sqlite import path_from_url
from tests.conftest import ROOT
from tests.unit.kv.kv_helpers import (
    cas_increment,
    increment_in_child,
    run_threads,
    transact_increment,
    transact_increment_in_child,
)


@pytest.mark.parametrize("url, kind", [
    ("memory://", MemoryKVStore),
    ("memory://shared", MemoryKVStore),
    ("ray://serveplane", RayKVStore),
    ("redis://127.0.0.1:6379/0", RedisKVStore),
], ids=["memory", "memory-named", "ray", "redis"])
def test_open_store_dispatches_on_the_scheme(url, kind):
    store = open_store(url)
    assert isinstance(store, kind) and store.url == url
    store.close()


def test_sqlite_urls_take_absolute_and_relative_paths(tmp_path, monkeypatch):
    assert path_from_url("sqlite:///abs/dir/state.db") == "/abs/dir/state.db"
    assert path_from_url("sqlite://state.db") == "state.db"
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite://relative.db")
    store.put("k", b"v")
    assert (tmp_path / "relative.db").exists()
    store.close()


@pytest.mark.parametrize("url, match", [
    ("etcd://localhost:2379", r"kv store url 'etcd://localhost:2379' has an unknown scheme; use one of "
                              r"memory://\[name\], ray://<namespace>, sqlite:///abs/path/state.db, redis://"),
    ("state.db", "'state.db' has an unknown scheme"),
    ("ray://", "kv store url 'ray://' must name a namespace"),
    ("ray://a:b", "'ray://a:b' must name a namespace without ':'"),
    ("sqlite://", "kv store url 'sqlite://' names no file"),
    ("sqlite:///tmp/dir/", "names no file"),
    ("redis://localhost:port/0", "'redis://localhost:port/0' has a bad port"),
    ("redis://localhost:6379/zero", "names database 'zero'; the database must be a number"),
], ids=["unknown-scheme", "bare-path", "ray-empty", "ray-colon", "sqlite-empty", "sqlite-dir",
        "redis-port", "redis-db"])
def test_bad_urls_name_the_url_and_the_rule(url, match):
    with pytest.raises(InvalidConfigError, match=match):
        open_store(url)


def test_a_non_string_url_is_refused():
    with pytest.raises(InvalidConfigError, match="kv store url of type int is not a string"):
        open_store(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("key, value, match", [
    ("", b"v", "kv key '' is invalid; keys must be non-empty strings"),
    (b"k", b"v", "kv key b'k' is invalid"),
    ("k", "text", "value for kv key 'k' is a str; values must be bytes"),
], ids=["empty-key", "bytes-key", "str-value"])
def test_bad_keys_and_values_are_refused_before_anything_is_written(key, value, match):
    store = MemoryKVStore()
    with pytest.raises(InvalidInputError, match=match):
        store.put(key, value)
    assert store.list("") == []


def test_named_memory_stores_share_one_dict_and_one_lock():
    name = f"memory://{uuid.uuid4().hex}"
    a, b, private = open_store(name), open_store(name), open_store("memory://")
    a.put("k", b"v")
    assert b.get("k") == b"v" and private.get("k") is None
    a.put("n", b"0")
    # two store objects on one name increment one counter without losing an update
    run_threads(4, lambda i: cas_increment((a, b)[i % 2], "n", 50))
    assert a.get("n") == b"200"


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_stores_pickle_as_their_url(tmp_path, dumps):
    for url in (f"memory://{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/p.db"):
        store = open_store(url)
        store.put("k", b"v")
        clone = pickle.loads(dumps(store))
        assert type(clone) is type(store) and clone.url == url and clone.get("k") == b"v"
    for url in ("ray://ns", "redis://127.0.0.1:1/0"):  # no connection needed to pickle
        clone = pickle.loads(dumps(open_store(url)))
        assert clone.url == url


# -- SQLite (and Redis) across processes ------------------------------------------------------
def test_sqlite_store_is_wal_and_full_sync(tmp_path):
    store = SQLiteKVStore(f"sqlite:///{tmp_path}/s.db")
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_a_new_sqlite_file_and_its_journal_are_private(tmp_path, caplog):
    old = os.umask(0o022)  # what SQLite would otherwise create with: readable by everyone
    try:
        store = SQLiteKVStore(f"sqlite:///{tmp_path}/s.db")
        store.put("k", b"v")
    finally:
        os.umask(old)
    modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777) for name in os.listdir(tmp_path)}
    assert modes == {"s.db": "0o600", "s.db-wal": "0o600", "s.db-shm": "0o600"}
    store.close()
    (tmp_path / "open.db").touch(mode=0o644)
    SQLiteKVStore(f"sqlite:///{tmp_path}/open.db").close()
    assert "is open to group or others (mode 0644); chmod 600 it" in caplog.text


@pytest.mark.parametrize("make_path", [
    lambda tmp: tmp / "no-such-dir" / "state.db",
    lambda tmp: (tmp / "a-file").write_text("x") and tmp / "a-file" / "state.db",
], ids=["missing-dir", "parent-is-a-file"])
def test_sqlite_in_an_unusable_path_is_unavailable(tmp_path, make_path):
    url = f"sqlite:///{make_path(tmp_path)}"
    with pytest.raises(KVStoreUnavailableError, match=f"key-value store {url} is unavailable: open failed"):
        open_store(url)


def test_sqlite_locked_past_the_busy_timeout_is_unavailable(tmp_path):
    url = f"sqlite:///{tmp_path}/locked.db"
    store = SQLiteKVStore(url, busy_timeout_s=0.1)
    store.put("k", b"1")
    holder = sqlite3.connect(f"{tmp_path}/locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(KVStoreUnavailableError, match=f"{url} is unavailable: put 'k' failed .*locked"):
            store.put("k", b"2")
        with pytest.raises(KVStoreUnavailableError, match="compare_and_set 'k' failed"):
            store.compare_and_set("k", b"1", b"2")
        with pytest.raises(KVStoreUnavailableError, match="transact 'j', 'k' failed .*locked"):
            store.transact({"k": b"1"}, {"k": b"2", "j": b"2"})
        assert time.monotonic() - t0 < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.compare_and_set("k", b"1", b"2")  # usable again once the lock is gone
    store.close()


def test_sqlite_transact_that_fails_midway_rolls_back_whole(tmp_path):
    """A trigger aborts the third write of a transaction, inside the database: the first two,
    already executed in it, must not survive, and the store must stay usable."""
    url = f"sqlite:///{tmp_path}/abort.db"
    store = SQLiteKVStore(url)
    store.put("a", b"old")
    conn = sqlite3.connect(f"{tmp_path}/abort.db", isolation_level=None)
    conn.execute("CREATE TRIGGER poison BEFORE INSERT ON kv WHEN NEW.key = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    conn.close()
    with pytest.raises(KVStoreUnavailableError, match=f"{url} is unavailable: transact 'a', 'b', 'poison' "
                                                      "failed \\(injected failure\\)"):
        store.transact({"a": b"old"}, {"a": b"new", "b": b"new", "poison": b"x"})
    assert (store.get("a"), store.get("b"), store.get("poison")) == (b"old", None, None)
    other = SQLiteKVStore(url)
    assert (other.get("a"), other.get("b")) == (b"old", None)
    assert store.transact({"a": b"old"}, {"a": b"new", "b": None})  # usable again
    assert other.get("a") == b"new"
    store.close()
    other.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_transactions_never_interleave_across_threads_and_processes(request, tmp_path, kind):
    """Two spawned processes and two threads raise twin counters by transact: every win is
    counted once and the twins stay equal."""
    url = f"sqlite:///{tmp_path}/tx.db" if kind == "sqlite" else request.getfixturevalue("redis_server").url
    store = open_store(url)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=transact_increment_in_child, args=(url, 30, f"p{i}")) for i in range(2)]
    for p in procs:
        p.start()
    try:
        run_threads(2, lambda i: transact_increment(store, 30, f"t{i}"), timeout_s=60)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0, f"child exited with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert store.get("a") == store.get("b") == b"120"
    log = store.list("log/")
    assert len(log) == 120
    assert {store.get(k) for k in log} == {b"p0", b"p1", b"t0", b"t1"}
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_cas_is_safe_across_threads_and_processes(request, tmp_path, kind):
    """Two spawned processes and two threads CAS-increment one counter: no update is lost."""
    url = f"sqlite:///{tmp_path}/procs.db" if kind == "sqlite" else request.getfixturevalue("redis_server").url
    store = open_store(url)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=increment_in_child, args=(url, "n", 40)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        run_threads(2, lambda i: cas_increment(store, "n", 40), timeout_s=60)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0, f"child exited with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert store.get("n") == b"160"
    store.close()


def test_sqlite_close_closes_every_threads_connection_and_reopens_lazily(tmp_path):
    store = SQLiteKVStore(f"sqlite:///{tmp_path}/c.db")
    run_threads(3, lambda i: store.put(f"k-{i}", b"v"))
    assert repr(store).endswith("[connections: 4]>")  # the opener's plus one per thread
    store.close()
    assert repr(store).endswith("[connections: 0]>")
    assert store.list("k-") == ["k-0", "k-1", "k-2"]


# -- Ray GCS KV without Ray -----------------------------------------------------------------
def test_ray_store_without_ray_initialized_is_unavailable():
    code = textwrap.dedent("""
        from serveplane.exceptions import KVStoreUnavailableError
        from serveplane.kv_store import open_store
        for call in (lambda s: s.put("k", b"v"), lambda s: s.transact({"k": None}, {"k": b"v"})):
            try:
                call(open_store("ray://ns"))
            except KVStoreUnavailableError as exc:
                print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"key-value store ray://ns is unavailable: {operation} failed (ray is not initialized in this "
        "process; call ray.init() first)" for operation in ("put 'k'", "transact 'k'")]


# -- Redis ------------------------------------------------------------------------------------
def test_redis_down_names_the_url_and_operation_fails_fast_and_recovers(redis_server):
    store = open_store(redis_server.url)
    store.put("k", b"v")
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(KVStoreUnavailableError,
                       match=f"^key-value store {redis_server.url} is unavailable: put 'k2' failed"):
        store.put("k2", b"v")
    for operation, call in [("get 'k'", lambda: store.get("k")),
                            ("delete 'k'", lambda: store.delete("k")),
                            ("list 'k'", lambda: store.list("k")),
                            ("compare_and_set 'k'", lambda: store.compare_and_set("k", b"v", b"w")),
                            ("transact 'a', 'b', 'c' and 1 more",
                             lambda: store.transact({"a": None, "b": b"x"}, {"c": b"1", "d": None}))]:
        with pytest.raises(KVStoreUnavailableError, match=f"unavailable: {operation} failed"):
            call()
    assert time.monotonic() - t0 < 5, "a down redis must fail fast"
    redis_server.start()
    assert store.compare_and_set("k", b"v", b"w")  # the same store object reconnects by itself
    assert store.transact({"k": b"w"}, {"k": b"x", "k2": b"y"})
    assert (store.get("k"), store.get("k2")) == (b"x", b"y")
    store.close()


def test_unavailable_error_survives_pickling(redis_server):
    store = open_store(redis_server.url)
    redis_server.stop()
    with pytest.raises(KVStoreUnavailableError) as info:
        store.get("k")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.store, clone.operation) == (redis_server.url, "get 'k'")
    redis_server.start()
