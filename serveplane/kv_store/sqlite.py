"""SQLite file store: WAL, ``synchronous=FULL``, safe across threads and processes.

Compare-and-set runs inside ``BEGIN IMMEDIATE``, which takes the database's write lock
before reading, so two processes can never both win.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError


def _path_from_url(url: str) -> str:
    rest = url[len("sqlite://"):]
    if rest.startswith("/"):
        path = rest  # sqlite:///abs/path -> /abs/path
    else:
        path = rest
    if not path:
        raise InvalidConfigError(f"kv store url {url!r} names no file; use sqlite:///path/state.db")
    return path


class SQLiteKVStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = _path_from_url(url)
        self._local = threading.local()
        self._conn()  # fail fast on an unusable path

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                       check_same_thread=True)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=10000")
                conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            except sqlite3.Error as exc:
                raise KVStoreUnavailableError(self.url, "open", exc) from None
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _run(self, operation: str, fn):  # type: ignore[no-untyped-def]
        try:
            return fn(self._conn())
        except sqlite3.Error as exc:
            raise KVStoreUnavailableError(self.url, operation, exc) from None

    def get(self, key: str) -> bytes | None:
        row = self._run(f"get {key!r}", lambda c: c.execute(
            "SELECT value FROM kv WHERE key = ?", (key,)).fetchone())
        return bytes(row[0]) if row else None

    def put(self, key: str, value: bytes) -> None:
        self._run(f"put {key!r}", lambda c: c.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, sqlite3.Binary(value))))

    def delete(self, key: str) -> None:
        self._run(f"delete {key!r}", lambda c: c.execute("DELETE FROM kv WHERE key = ?", (key,)))

    def list(self, prefix: str) -> list[str]:
        rows = self._run(f"list {prefix!r}", lambda c: c.execute(
            "SELECT key FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)).fetchall())
        return [r[0] for r in rows]

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        def cas(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                current = bytes(row[0]) if row else None
                if current != expected:
                    c.execute("ROLLBACK")
                    return False
                c.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                          "SET value = excluded.value", (key, sqlite3.Binary(new)))
                c.execute("COMMIT")
                return True
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

        return self._run(f"compare_and_set {key!r}", cas)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
