"""A commit whose reply is lost, on a real redis-server: between the store and the server a
TCP relay (``LossyRelay``) forwards every byte, except that once armed it lets Redis run the
next transaction script (``EVALSHA``) and then cuts the connection before the reply, or cuts
it before the script reaches Redis. ``RecordStore.write`` must read its commit record back
and answer with what the store really holds: written, or not (and never later)."""

from __future__ import annotations

import select
import socket
import threading

import pytest

from serveplane.exceptions import KVStoreUnavailableError
from serveplane.kv_store import RecordStore, open_store
from tests.conftest import TEST_KEY

BEFORE = {"backend/a": {"v": 1}, "endpoint/e": {"route": "/e"}}
CHANGE = {"backend/a": {"v": 2}, "endpoint/e": None, "backend/ghost": {"v": 1}}
AFTER = {"backend/a": {"v": 2}, "backend/ghost": {"v": 1}}


class LossyRelay:
    """127.0.0.1:<port> -> the server; ``arm("reply")`` drops the reply to the next
    ``EVALSHA`` after Redis ran it, ``arm("request")`` drops that request itself."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode: str | None = None
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="lossy-relay", daemon=True)
        self._thread.start()

    def arm(self, mode: str) -> None:
        self.cut.clear()
        self.mode = mode

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            server = socket.create_connection(("127.0.0.1", self.server_port), timeout=5)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        awaiting_cut = False
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if self.mode and b"EVALSHA" in data.upper():
                            mode, self.mode = self.mode, None
                            if mode == "request":
                                self.cut.set()
                                return  # never reaches Redis
                            awaiting_cut = True
                        server.sendall(data)
                    elif awaiting_cut:
                        self.cut.set()
                        return  # Redis ran it; its reply is lost
                    else:
                        client.sendall(data)
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def relay(redis_server):
    relay = LossyRelay(redis_server.port)
    yield relay
    relay.close()


def stores(redis_server, relay):
    lossy = open_store(f"redis://127.0.0.1:{relay.port}/0")
    direct = open_store(redis_server.url)
    return lossy, direct


def test_a_commit_whose_reply_is_lost_after_it_ran_is_reported_written(redis_server, relay):
    lossy, direct = stores(redis_server, relay)
    try:
        writer = RecordStore(lossy, "ns", key=TEST_KEY)
        epoch = writer.acquire_epoch()
        writer.write(epoch, BEFORE)  # the script is loaded: the next EVALSHA runs it
        relay.arm("reply")
        txn = writer.write(epoch, CHANGE)  # must not raise: it is in the store
        assert relay.cut.is_set(), "the relay never cut a reply; the test proves nothing"
        truth = RecordStore(direct, "ns", key=TEST_KEY)
        assert truth.read_all() == AFTER and truth.last_commit()["txn"] == txn
        writer.write(epoch, {"goal/g": {"ok": True}})  # and the writer carries on
        assert truth.read_all() == {**AFTER, "goal/g": {"ok": True}}
    finally:
        lossy.close()
        direct.close()


def test_a_commit_that_never_reached_redis_is_reported_not_written_and_never_lands(redis_server, relay):
    lossy, direct = stores(redis_server, relay)
    try:
        writer = RecordStore(lossy, "ns", key=TEST_KEY)
        epoch = writer.acquire_epoch()
        writer.write(epoch, BEFORE)
        relay.arm("request")
        with pytest.raises(KVStoreUnavailableError):
            writer.write(epoch, CHANGE)
        assert relay.cut.is_set()
        truth = RecordStore(direct, "ns", key=TEST_KEY)
        assert truth.read_all() == BEFORE
        assert truth.last_commit()["abandons"] is not None  # a late copy of it can never apply
        writer.write(epoch, {"goal/g": {"ok": True}})
        assert truth.read_all() == {**BEFORE, "goal/g": {"ok": True}}
    finally:
        lossy.close()
        direct.close()
