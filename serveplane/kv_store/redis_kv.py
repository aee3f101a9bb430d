"""Redis store (an external, shared server). CAS is one Lua script, atomic on the server."""

from __future__ import annotations

from typing import Any

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError

_CAS = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if cur then return 0 end
else
  if (not cur) or cur ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""


class RedisKVStore:
    def __init__(self, url: str, socket_timeout_s: float = 2.0) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is a dependency of the test extra
            raise InvalidConfigError(
                f"kv store url {url!r} needs the 'redis' package; pip install redis") from None
        self.url = url
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                                 socket_connect_timeout=socket_timeout_s)
        self._cas = self._client.register_script(_CAS)

    def _run(self, operation: str, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except self._errors as exc:
            raise KVStoreUnavailableError(self.url, operation, exc) from None

    def get(self, key: str) -> bytes | None:
        return self._run(f"get {key!r}", lambda: self._client.get(key))

    def put(self, key: str, value: bytes) -> None:
        self._run(f"put {key!r}", lambda: self._client.set(key, value))

    def delete(self, key: str) -> None:
        self._run(f"delete {key!r}", lambda: self._client.delete(key))

    def list(self, prefix: str) -> list[str]:
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
        keys = self._run(f"list {prefix!r}", lambda: list(self._client.scan_iter(match=pattern, count=500)))
        return sorted(k.decode() if isinstance(k, bytes) else k for k in keys)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        args = ["0", b"", new] if expected is None else ["1", expected, new]
        return bool(self._run(f"compare_and_set {key!r}", lambda: self._cas(keys=[key], args=args)))

    def close(self) -> None:
        self._client.close()
