"""Redis store (``redis://host:port/db``): an external server shared by many processes.

Compare-and-set is one Lua script, which Redis runs atomically, so it holds across any
number of processes and hosts. Socket timeouts are short (2 s) and there are no client-side
retries, so a down server fails an operation at once with ``KVStoreUnavailableError`` instead
of stalling the controller; the next operation reconnects by itself once the server is back.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError
from serveplane.kv_store.base import check_key, check_value

T = TypeVar("T")

SOCKET_TIMEOUT_S = 2.0

# ARGV[1] = "absent" | "equals"; ARGV[2] = expected value; ARGV[3] = new value.
_CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == 'absent' then
  if current then return 0 end
elseif (not current) or current ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""

_GLOB_SPECIALS = frozenset("*?[]\\")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        raise InvalidConfigError(
            f"kv store url {url!r} has a bad port; use redis://host:port/db") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise InvalidConfigError(
            f"kv store url {url!r} names database {db!r}; the database must be a number "
            "(redis://host:port/0)")


class RedisKVStore:
    def __init__(self, url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        _check_url(url)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:  # pragma: no cover - redis ships with the test extra
            raise InvalidConfigError(f"kv store url {url!r} needs the 'redis' package; pip install redis") from None
        self.url = url
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0))
        self._cas = self._client.register_script(_CAS_SCRIPT)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url,))

    def __repr__(self) -> str:
        return f"<RedisKVStore {self.url}>"

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
        new = check_value(check_key(key), new)
        args: list[bytes | str] = ["absent", b"", new] if expected is None else ["equals", bytes(expected), new]
        return bool(self._run(f"compare_and_set {key!r}", lambda: self._cas(keys=[key], args=args)))

    def close(self) -> None:
        self._client.close()
