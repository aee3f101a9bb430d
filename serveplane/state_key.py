"""Where the state key comes from: ``$SERVEPLANE_STATE_KEY``, a key file, or the default
key file, created on first start.

Resolution (``resolve_state_key``), in the process that calls ``serveplane.start`` (or runs
``serveplane run`` / ``serveplane migrate-state``):

1. ``$SERVEPLANE_STATE_KEY``, at least 32 characters (surrounding whitespace ignored);
2. else ``state_key_file=``, which must exist;
3. else the default key file ``$XDG_CONFIG_HOME/serveplane/state-key`` (``~/.config/...``
   when ``XDG_CONFIG_HOME`` is unset), created on first use: 43 random URL-safe characters,
   mode 0600 in a 0700 folder, never replacing a file another process just created.

Giving both 1 and 2 is refused (which one was meant?). A key file is read only if it is a
regular file (not a symbolic link), owned by the calling user and not readable or writable by
group or others, as ssh treats private keys. The key then travels to the controller actor as
an argument of its creation (``serveplane.api.start``); nothing else needs it.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from serveplane.exceptions import InvalidConfigError
from serveplane.kv_store.auth import StateKey

logger = logging.getLogger(__name__)

ENV_VAR = "SERVEPLANE_STATE_KEY"
_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "serveplane" / "state-key"


def resolve_state_key(state_key_file: str | os.PathLike[str] | None = None) -> StateKey:
    """The state key this process should hand to a new controller (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        if state_key_file is not None:
            raise InvalidConfigError(
                f"both ${ENV_VAR} and state_key_file={str(state_key_file)!r} give a state key; "
                "give one (unset the variable or drop state_key_file)")
        return StateKey(env, f"${ENV_VAR}")
    if state_key_file is not None:
        path = Path(state_key_file).expanduser()
        if not os.path.lexists(path):
            raise InvalidConfigError(
                f"state key file {str(path)!r} does not exist; create it with "
                f"(umask 077; {_GENERATE} > {path}), or leave state_key_file out to use "
                f"{str(default_key_file())!r}")
        return read_key_file(path)
    path = default_key_file()
    if not os.path.lexists(path):
        _create_key_file(path)
    return read_key_file(path)


def read_key_file(path: Path) -> StateKey:
    """The key in ``path``, refusing links, other users' files and files others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidConfigError(
                f"state key file {str(path)!r} is a symbolic link; point state_key_file at the "
                "file itself") from None
        raise InvalidConfigError(f"state key file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidConfigError(f"state key file {str(path)!r} is not a regular file")
        if info.st_uid != os.getuid():
            raise InvalidConfigError(
                f"state key file {str(path)!r} is owned by uid {info.st_uid}, not by you (uid "
                f"{os.getuid()}); use a key file of your own")
        if info.st_mode & 0o077:
            raise InvalidConfigError(
                f"state key file {str(path)!r} is open to group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            secret = f.read(4096).strip()
    finally:
        os.close(fd)
    return StateKey(secret, f"file {path}")


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(secrets.token_urlsafe(32).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first: keep theirs
        logger.warning("created the serveplane state key file %s (mode 0600); keep it (and back it "
                       "up): state written under it loads only with it", path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
