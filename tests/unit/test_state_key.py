"""Where the state key comes from: the environment, a key file, or the default file."""

from __future__ import annotations

import os
import stat

import pytest

from serveplane.exceptions import InvalidConfigError
from serveplane.state_key import ENV_VAR, default_key_file, resolve_state_key

SECRET = "k" * 40


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def key_file(path, text=SECRET, mode=0o600):
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_the_environment_variable_is_the_key(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f"  {SECRET}  ")
    key = resolve_state_key()
    assert key.source == f"${ENV_VAR}" and SECRET not in repr(key)


def test_the_variable_and_a_key_file_together_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, SECRET)
    with pytest.raises(InvalidConfigError, match=f"both \\${ENV_VAR} and state_key_file=.* give a state key"):
        resolve_state_key(key_file(tmp_path / "k"))


def test_the_default_key_file_is_created_once_0600_in_a_0700_folder(no_env):
    path = default_key_file()
    assert path == no_env / "config" / "serveplane" / "state-key" and not path.exists()
    first = resolve_state_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text().strip()) >= 32 and first.source == f"file {path}"
    assert resolve_state_key().id == first.id  # read again, not replaced
    assert os.listdir(path.parent) == ["state-key"]  # no temporary file left


def test_an_explicit_key_file_is_read_and_must_exist(no_env):
    assert resolve_state_key(key_file(no_env / "k")).source == f"file {no_env / 'k'}"
    with pytest.raises(InvalidConfigError, match="state key file '.*/missing' does not exist; create it with"):
        resolve_state_key(no_env / "missing")
    assert not default_key_file().exists()  # an explicit file never falls back to creating one


@pytest.mark.parametrize("setup, match", [
    (lambda p: key_file(p, mode=0o644), "is open to group or others \\(mode 0644\\); run: chmod 600"),
    (lambda p: key_file(p, mode=0o620), "is open to group or others \\(mode 0620\\)"),
    (lambda p: (key_file(p.with_name("real")), os.symlink(p.with_name("real"), p)),
     "is a symbolic link; point state_key_file at the file itself"),
    (lambda p: key_file(p, text="short"), "state key from file .* is 5 bytes; a state key has at least 32"),
    (lambda p: p.mkdir(), "is not a regular file|cannot be read"),
], ids=["world-readable", "group-writable", "symlink", "too-short", "a-folder"])
def test_unsafe_key_files_are_refused(no_env, setup, match):
    path = no_env / "k"
    setup(path)
    with pytest.raises(InvalidConfigError, match=match):
        resolve_state_key(path)


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user")
def test_a_key_file_of_another_user_is_refused(no_env):
    path = key_file(no_env / "k")
    os.chown(path, 65534, 65534)
    with pytest.raises(InvalidConfigError, match="is owned by uid 65534, not by you \\(uid 0\\)"):
        resolve_state_key(path)
