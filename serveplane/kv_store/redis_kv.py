"""Redis store (``redis://host:port/db``): an external server shared by many processes.

Compare-and-set and ``transact`` are one Lua script, which Redis runs atomically, so they
hold across any number of processes and hosts. Redis has no rollback, so the script is built
never to stop halfway: it checks every key before its first write, and its writes (``SET``,
``DEL``) cannot fail once one has run (over ``maxmemory`` Redis refuses a script's first write,
never a later one). Redis logs a script's writes to the append-only file as one
``MULTI``/``EXEC`` block, which a restart replays whole or not at all. So
``atomic_transactions`` is true.

Socket timeouts are short (2 s) and there are no client-side retries, so a down server fails
an operation at once with ``KVStoreUnavailableError`` instead of stalling the controller; the
next operation reconnects by itself once the server is back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError
from serveplane.kv_store.base import Changes, check_changes, check_key, check_value, transaction_name
from serveplane.redact import redact_url

T = TypeVar("T")

SOCKET_TIMEOUT_S = 2.0

# KEYS: the checked keys, then the written keys. ARGV[1]: how many keys are checked; then per
# checked key "absent" | "equals" and the expected value; then per written key "set" | "del"
# and the new value. Every check runs before the first write, so a mismatch changes nothing.
_TRANSACT_SCRIPT = """
local checks = tonumber(ARGV[1])
for i = 1, checks do
  local current = redis.call('GET', KEYS[i])
  if ARGV[2 * i] == 'absent' then
    if current then return 0 end
  elseif (not current) or current ~= ARGV[2 * i + 1] then
    return 0
  end
end
for i = checks + 1, #KEYS do
  if ARGV[2 * i] == 'set' then
    redis.call('SET', KEYS[i], ARGV[2 * i + 1])
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""

_GLOB_SPECIALS = frozenset("*?[]\\")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        raise InvalidConfigError(
            f"kv store url {redact_url(url)!r} has a bad port; use redis://host:port/db") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise InvalidConfigError(
            f"kv store url {redact_url(url)!r} names database {db!r}; the database must be a number "
            "(redis://host:port/0)")


class RedisKVStore:
    atomic_transactions = True

    def __init__(self, url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        _check_url(url)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:  # pragma: no cover - redis ships with the test extra
            raise InvalidConfigError(
                f"kv store url {redact_url(url)!r} needs the 'redis' package; pip install redis") from None
        self.url = url
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0))
        self._transact = self._client.register_script(_TRANSACT_SCRIPT)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url,))

    def __repr__(self) -> str:
        return f"<RedisKVStore {redact_url(self.url)}>"

    def _run(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self._errors as exc:
            raise KVStoreUnavailableError(self.url, operation, exc) from None

    def get(self, key: str) -> bytes | None:
        check_key(key)
        return self._run(f"get {key!r}", lambda: self._client.get(key))

    def put(self, key: str, value: bytes) -> None:
        value = check_value(check_key(key), value)
        self._run(f"put {key!r}", lambda: self._client.set(key, value))

    def delete(self, key: str) -> None:
        check_key(key)
        self._run(f"delete {key!r}", lambda: self._client.delete(key))

    def list(self, prefix: str) -> list[str]:
        pattern = "".join("\\" + ch if ch in _GLOB_SPECIALS else ch for ch in prefix) + "*"
        keys = self._run(f"list {prefix!r}", lambda: list(self._client.scan_iter(match=pattern, count=500)))
        return sorted({k.decode() if isinstance(k, bytes) else k for k in keys})  # SCAN may repeat a key

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        checks, writes = check_changes({key: expected}), check_changes({key: check_value(check_key(key), new)})
        return self._run_script(f"compare_and_set {key!r}", checks, writes)

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        checked, written = check_changes(checks), check_changes(writes)
        return self._run_script(transaction_name(checked, written), checked, written)

    def _run_script(self, operation: str, checks: Changes, writes: Changes) -> bool:
        args: list[bytes | str | int] = [len(checks)]
        for expected in checks.values():
            args += ["absent", b""] if expected is None else ["equals", expected]
        for value in writes.values():
            args += ["del", b""] if value is None else ["set", value]
        keys = [*checks, *writes]
        return bool(self._run(operation, lambda: self._transact(keys=keys, args=args)))

    def close(self) -> None:
        self._client.close()
