"""serveplane.start resolves the state key in the driver and hands it to the controller;
connect() needs none; a controller Ray restarts keeps it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid

import pytest
import ray

import serveplane
from serveplane.exceptions import InvalidConfigError
from tests.conftest import ROOT
from tests.integration.security.backends import Model

pytestmark = [pytest.mark.ray]


def test_the_key_file_reaches_the_controller_and_survives_its_restart(ray_session, tmp_path, monkeypatch):
    monkeypatch.delenv("SERVEPLANE_STATE_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key_file = tmp_path / "key"
    key_file.write_text("a-key-file-secret-0123456789abcdefghij\n")
    key_file.chmod(0o600)
    ns = f"key-{uuid.uuid4().hex[:6]}"
    with pytest.raises(InvalidConfigError, match="does not exist"):
        serveplane.start(kv_store=f"sqlite:///{tmp_path}/s.db", namespace=ns, state_key_file=tmp_path / "nope")
    client = serveplane.start(kv_store=f"sqlite:///{tmp_path}/s.db", namespace=ns, state_key_file=key_file)
    try:
        client.create_backend("m", Model)
        status = client.get_status()
        assert status["state_key"]["source"] == f"file {key_file}"
        assert "a-key-file-secret" not in repr(status)
        assert not (tmp_path / "config").exists()  # an explicit file: no default key created
        assert stat.S_IMODE(os.stat(tmp_path / "s.db").st_mode) == 0o600

        # another process attaches without any key
        env = {k: v for k, v in os.environ.items() if k != "SERVEPLANE_STATE_KEY"}
        attach = subprocess.run(
            [sys.executable, "-c", "import ray, serveplane, sys; ray.init(address=sys.argv[1]); "
             f"print(sorted(serveplane.connect(namespace={ns!r}).get_status()['backends']))",
             ray.get_runtime_context().gcs_address], capture_output=True, text=True, timeout=120,
            env=dict(env, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp_path / "attach")), cwd=str(ROOT))
        assert attach.returncode == 0 and attach.stdout.strip().endswith("['m']"), attach.stderr[-2000:]
        assert not (tmp_path / "attach").exists()  # connect() resolved no key

        restarted = client.restart_controller(status["epoch"])  # Ray re-creates it: same key
        assert restarted["refused"] == [] and set(restarted["backends"]) == {"m"}
        assert restarted["state_key"]["source"] == f"file {key_file}"
    finally:
        client.shutdown()
