"""The CLI's state: the address of the Ray cluster ``serveplane run`` started, for the
commands that follow it.

It lives in a per-user folder: ``$SERVEPLANE_STATE_DIR`` if set, else
``$XDG_RUNTIME_DIR/serveplane``, else ``<tmp>/serveplane-<uid>``. The folder is created 0700
and the file 0600; a folder or file that is a symbolic link, belongs to another user, or (the
folder) is open to group or others is refused, so another user of the machine can neither
read the address nor point the CLI at a cluster of theirs.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from serveplane.exceptions import InvalidConfigError

ADDRESS_FILE_NAME = "ray_address"


def state_dir() -> Path:
    override = os.environ.get("SERVEPLANE_STATE_DIR")
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "serveplane"
    return Path(tempfile.gettempdir()) / f"serveplane-{os.getuid()}"


def address_file() -> Path:
    return state_dir() / ADDRESS_FILE_NAME


def _fix(path: Path) -> str:
    return f"remove it, or set SERVEPLANE_STATE_DIR to a folder of your own (not {str(path)!r})"


def _check_owned(path: Path, info: os.stat_result, what: str) -> None:
    if info.st_uid != os.getuid():
        raise InvalidConfigError(
            f"cli {what} {str(path)!r} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}); "
            f"{_fix(path)}")


def _checked_dir(create: bool) -> Path | None:
    path = state_dir()
    for _ in range(2):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue  # someone made it first: check theirs
            continue
        if stat.S_ISLNK(info.st_mode):
            raise InvalidConfigError(f"cli state folder {str(path)!r} is a symbolic link; {_fix(path)}")
        if not stat.S_ISDIR(info.st_mode):
            raise InvalidConfigError(f"cli state folder {str(path)!r} is not a folder; {_fix(path)}")
        _check_owned(path, info, "state folder")
        if info.st_mode & 0o077:
            raise InvalidConfigError(
                f"cli state folder {str(path)!r} is open to group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 700 {path}")
        return path
    raise InvalidConfigError(f"cli state folder {str(path)!r} could not be created; {_fix(path)}")


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidConfigError(f"cli address file {str(path)!r} is a symbolic link; {_fix(path)}") from None
        raise


def write_address(address: str) -> Path:
    """Record the address of the cluster ``serveplane run`` started (0600, this user only)."""
    folder = _checked_dir(create=True)
    if folder is None:  # create=True returns the folder or raises
        raise InvalidConfigError(f"cli state folder {str(state_dir())!r} could not be created")
    path = folder / ADDRESS_FILE_NAME
    fd = _open(path, os.O_WRONLY | os.O_CREAT)
    try:
        info = os.fstat(fd)
        _check_owned(path, info, "address file")
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.write(fd, address.encode())
    finally:
        os.close(fd)
    return path


def read_address() -> str | None:
    """The recorded address, or None when there is none; an unsafe file is refused."""
    folder = _checked_dir(create=False)
    if folder is None:
        return None
    path = folder / ADDRESS_FILE_NAME
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidConfigError(f"cli address file {str(path)!r} is not a regular file; {_fix(path)}")
        _check_owned(path, info, "address file")
        return os.read(fd, 4096).decode(errors="replace").strip() or None
    finally:
        os.close(fd)


def forget_address() -> None:
    folder = _checked_dir(create=False)
    if folder is not None:
        (folder / ADDRESS_FILE_NAME).unlink(missing_ok=True)
