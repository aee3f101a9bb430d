"""The CLI's address file: per user, private, and never read from someone else's file."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from serveplane import cli_state
from serveplane.exceptions import InvalidConfigError

ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user")


@pytest.fixture
def runtime(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVEPLANE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_the_address_lives_in_the_users_runtime_dir_0700_and_0600(runtime):
    assert cli_state.read_address() is None
    path = cli_state.write_address("10.0.0.1:6379")
    assert path == runtime / "serveplane" / "ray_address"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cli_state.read_address() == "10.0.0.1:6379"
    cli_state.forget_address()
    assert cli_state.read_address() is None


def test_without_a_runtime_dir_it_is_a_per_user_folder_in_tmp(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVEPLANE_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    assert cli_state.state_dir() == tmp_path / f"serveplane-{os.getuid()}"
    assert cli_state.write_address("a:1").parent == tmp_path / f"serveplane-{os.getuid()}"


@pytest.mark.parametrize("setup, match", [
    (lambda d: (d.parent.joinpath("elsewhere").mkdir(mode=0o700), d.symlink_to(d.parent / "elsewhere")),
     "cli state folder '.*' is a symbolic link; remove it, or set SERVEPLANE_STATE_DIR"),
    (lambda d: d.mkdir(mode=0o755) or d.chmod(0o755), "is open to group or others \\(mode 0755\\); run: chmod 700"),
    (lambda d: (d.mkdir(mode=0o700), (d.parent / "target").write_text("evil:1"),
                (d / "ray_address").symlink_to(d.parent / "target")),
     "cli address file '.*' is a symbolic link"),
    (lambda d: d.write_text("not a folder"), "is not a folder"),
], ids=["folder-symlink", "folder-open", "file-symlink", "folder-is-a-file"])
def test_unsafe_state_is_refused_for_reading_and_writing(runtime, setup, match):
    setup(runtime / "serveplane")
    with pytest.raises(InvalidConfigError, match=match):
        cli_state.read_address()
    with pytest.raises(InvalidConfigError, match=match):
        cli_state.write_address("mine:1")


@ROOT_ONLY
def test_another_users_folder_or_file_is_refused(runtime):
    folder = runtime / "serveplane"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(InvalidConfigError, match="cli state folder '.*' is owned by uid 65534, not by you"):
        cli_state.read_address()
    os.chown(folder, 0, 0)
    (folder / "ray_address").write_text("evil:1")
    os.chown(folder / "ray_address", 65534, 65534)
    with pytest.raises(InvalidConfigError, match="cli address file '.*' is owned by uid 65534, not by you"):
        cli_state.read_address()
    with pytest.raises(InvalidConfigError, match="is owned by uid 65534"):
        cli_state.write_address("mine:1")
