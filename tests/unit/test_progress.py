"""Start-up progress and the coloured status table (``serveplane/progress.py``): no Ray."""

from __future__ import annotations

import io
import threading

from serveplane.progress import BackendProgress, StartupWatcher, describe_backend, render_status


def _status(running: int, starting: int, target: int = 2, failure: str | None = None) -> dict:
    replicas = {k: v for k, v in (("RUNNING", running), ("STARTING", starting)) if v}
    return {"backends": {"m:v1": {"replicas": replicas, "target_replicas": target, "failure": failure}},
            "endpoints": {}}


def test_a_line_names_the_backend_how_many_of_how_many_and_the_failure() -> None:
    line = describe_backend("m:v1", _status(1, 1, failure="could not be started: ImportError: no torch"), 3.25)
    assert line == ("backend m:v1: 1/2 replicas running, 1 starting (3.2s); a replica failed to start: "
                    "could not be started: ImportError: no torch")
    assert describe_backend("other", _status(0, 1), 0.5) == "backend other: not registered yet (0.5s)"


class _Script:
    """``get_status`` answers from a script; the last answer repeats. ``seen`` is set once the
    script is used up, so a test leaves ``watching`` only after every answer was looked at."""

    def __init__(self, answers: list[dict], fail_call: int | None = None) -> None:
        self.answers = answers
        self.fail_call = fail_call
        self.calls = 0
        self.seen = threading.Event()

    def __call__(self) -> dict:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if self.calls >= len(self.answers) + 2:
            self.seen.set()
        if self.calls == self.fail_call:
            raise ConnectionError("controller restarting")  # skipped: the next look tries again
        return answer


def test_plain_view_shows_each_change_once_in_order() -> None:
    script = _Script([_status(0, 2), _status(0, 2), _status(0, 2, failure="ImportError: torch"),
                      _status(1, 1, failure="ImportError: torch"), _status(2, 0)], fail_call=2)
    out = io.StringIO()
    with StartupWatcher(script, out=out, live=False, period_s=0.001).watching("m:v1"):
        assert script.seen.wait(10), "the watcher stopped looking"
    lines = [line.strip().rsplit(" (", 1) for line in out.getvalue().splitlines()]
    heads = [head for head, _ in lines]
    assert heads == ["backend m:v1: 0/2 replicas running, 2 starting",
                     "backend m:v1: 0/2 replicas running, 2 starting",
                     "backend m:v1: 1/2 replicas running, 1 starting",
                     "backend m:v1: 2/2 replicas running"]
    assert lines[1][1].endswith("; a replica failed to start: ImportError: torch")
    assert "\x1b[" not in out.getvalue()  # no colour codes in a pipe


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_view_draws_a_bar_and_prints_the_failure_on_a_terminal() -> None:
    script = _Script([_status(0, 2), _status(0, 2, failure="ImportError: torch"), _status(2, 0)])
    out = _Terminal()
    with StartupWatcher(script, out=out, period_s=0.001).watching("m:v1"):
        assert script.seen.wait(10), "the watcher stopped looking"
    text = out.getvalue()
    assert "m:v1" in text and "2/2" in text and "\x1b[" in text
    assert text.count("a replica failed to start:") == 1 and "ImportError: torch" in text


def test_progress_reads_updating_as_serving_and_recovering_as_starting() -> None:
    status = {"backends": {"b": {"replicas": {"UPDATING": 1, "RUNNING": 1, "RECOVERING": 1},
                                 "target_replicas": 3}}}
    assert BackendProgress.from_status("b", status) == BackendProgress("b", 2, 3, 1)


STATUS = {"backends": {"sentiment:v1": {"replicas": {"RUNNING": 2}, "target_replicas": 2},
                       "sentiment:v2": {"replicas": {"STARTING": 1}, "target_replicas": 1,
                                        "failure": "could not be started: boom"}},
          "endpoints": {"sentiment": {"route": "/sentiment", "traffic": {"sentiment:v1": 0.9, "sentiment:v2": 0.1},
                                      "shadows": {"sentiment:v2": 0.2}}},
          "checkpoint_warning": "the store is slow"}


def test_status_in_colour_on_a_terminal_plain_in_a_pipe() -> None:
    coloured = _Terminal()
    render_status(STATUS, {}, coloured)
    assert "\x1b[" in coloured.getvalue()
    plain = io.StringIO()
    render_status(STATUS, {}, plain, width=200)
    text = plain.getvalue()
    assert "\x1b[" not in text
    for cell in ("sentiment:v1", "2/2", "running=2", "0/1", "starting=1", "! could not be started: boom",
                 "/sentiment", "sentiment:v1=0.9 sentiment:v2=0.1", "sentiment:v2=0.2",
                 "! checkpoint: the store is slow"):
        assert cell in text, cell
