"""SQLite file store (``sqlite:///abs/path/state.db`` or ``sqlite://relative.db``).

Embedded and durable: WAL journal, ``synchronous=FULL`` (a returned write survives power
loss), and a busy timeout so concurrent writers wait instead of failing.

Invariants:

- one connection per thread (and per process: a forked child opens its own), so threads
  never share a sqlite handle;
- compare-and-set and ``transact`` run inside ``BEGIN IMMEDIATE``, which takes the
  database's write lock before reading, so of two processes or threads racing on one key only
  one can win, and a transaction commits whole or (on a mismatch, an error or a crash) not at
  all: ``atomic_transactions`` is true;
- a lock held past the busy timeout, a missing directory or an unwritable file raises
  ``KVStoreUnavailableError`` naming the URL and the operation;
- a database file this store creates is created 0600 (its WAL and shared-memory files
  follow: SQLite gives them the database's mode), so other users of the machine can neither
  read the state nor write it. An existing file keeps its mode; a looser one is logged.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from typing import Any, Callable, Mapping, TypeVar

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError
from serveplane.kv_store.base import Changes, check_changes, check_key, check_value, transaction_name

T = TypeVar("T")

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0

_UPSERT = ("INSERT INTO kv (key, value) VALUES (?, ?) "
           "ON CONFLICT(key) DO UPDATE SET value = excluded.value")


def path_from_url(url: str) -> str:
    """``sqlite:///abs/x.db`` -> ``/abs/x.db``; ``sqlite://rel.db`` -> ``rel.db`` (cwd-relative)."""
    path = url[len("sqlite://"):]
    if not path or path.endswith("/"):
        raise InvalidConfigError(
            f"kv store url {url!r} names no file; use sqlite:///abs/path/state.db")
    return path


class SQLiteKVStore:
    atomic_transactions = True

    def __init__(self, url: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.url = url
        self.path = path_from_url(url)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all_lock = threading.Lock()
        self._all: list[tuple[int, sqlite3.Connection]] = []  # (pid, conn) of every thread, for close()
        self._create_private()
        self._conn()  # fail fast on an unusable path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.busy_timeout_s))

    def __repr__(self) -> str:
        return f"<SQLiteKVStore {self.url} [connections: {len(self._all)}]>"

    def _create_private(self) -> None:
        """Create the database file 0600 before SQLite does (it would use the umask)."""
        if self.path == ":memory:" or self.path.startswith("file:"):
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
            if mode & 0o077:
                logger.warning("state database %s is open to group or others (mode %04o); "
                               "chmod 600 it", self.path, mode)
            return
        except OSError as exc:  # a missing folder: reported by the first connection
            if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                return
            raise KVStoreUnavailableError(self.url, "create", exc) from None
        os.close(fd)

    def _conn(self, operation: str = "open") -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            # isolation_level=None: no implicit transactions; CAS opens its own.
            # check_same_thread=False only so that close() may close other threads' handles.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        except sqlite3.Error as exc:
            raise KVStoreUnavailableError(self.url, operation, exc) from None
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._all_lock:
            self._all.append((os.getpid(), conn))
        return conn

    def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn(operation)
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise KVStoreUnavailableError(self.url, operation, exc) from None

    def get(self, key: str) -> bytes | None:
        check_key(key)
        row = self._run(f"get {key!r}", lambda c: c.execute(
            "SELECT value FROM kv WHERE key = ?", (key,)).fetchone())
        return bytes(row[0]) if row else None

    def put(self, key: str, value: bytes) -> None:
        value = check_value(check_key(key), value)
        self._run(f"put {key!r}", lambda c: c.execute(_UPSERT, (key, value)))

    def delete(self, key: str) -> None:
        check_key(key)
        self._run(f"delete {key!r}", lambda c: c.execute("DELETE FROM kv WHERE key = ?", (key,)))

    def list(self, prefix: str) -> list[str]:
        # substr, not LIKE: '%' and '_' in a prefix are literal. ORDER BY compares UTF-8
        # bytes, which orders keys as Python's sorted() does.
        rows = self._run(f"list {prefix!r}", lambda c: c.execute(
            "SELECT key FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)).fetchall())
        return [r[0] for r in rows]

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        checks, writes = check_changes({key: expected}), check_changes({key: check_value(check_key(key), new)})
        return self._run(f"compare_and_set {key!r}", lambda c: _transaction(c, checks, writes))

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        checked, written = check_changes(checks), check_changes(writes)
        return self._run(transaction_name(checked, written), lambda c: _transaction(c, checked, written))

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for pid, conn in conns:
            if pid == os.getpid():  # a forked child must not close its parent's handles
                conn.close()
        self._local = threading.local()


def _transaction(c: sqlite3.Connection, checks: Changes, writes: Changes) -> bool:
    """Check, then write, holding the database's write lock; commit whole or roll back."""
    c.execute("BEGIN IMMEDIATE")
    try:
        for key, expected in checks.items():
            row = c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            if (bytes(row[0]) if row else None) != expected:
                c.execute("ROLLBACK")
                return False
        c.executemany(_UPSERT, [(k, v) for k, v in writes.items() if v is not None])
        c.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k, v in writes.items() if v is None])
        c.execute("COMMIT")
        return True
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
