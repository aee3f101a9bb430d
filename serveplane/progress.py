"""What ``serveplane run`` and ``apply`` show while replicas start, and the coloured
``serveplane status`` table.

While a backend change waits for its goal, a watcher thread asks the controller for
``get_status()`` a few times a second and shows, per backend, how many replicas run of how
many wanted, how many are starting, the time spent, and why the last start failed (or why a
replica may be waiting for resources). On a terminal this is a live ``rich`` progress bar;
elsewhere (a pipe, a log, tests) a plain line is printed each time what it says changes,
never once per tick. ``describe_backend`` is pure, so both views say the same thing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

POLL_PERIOD_S = 0.25
SERVING_STATES = ("RUNNING", "UPDATING")


@dataclass(frozen=True)
class BackendProgress:
    """One backend's start-up, as one look at ``get_status()`` tells it."""

    backend: str
    running: int
    target: int
    starting: int
    failure: str | None = None
    placement: str | None = None

    @classmethod
    def from_status(cls, backend: str, status: dict[str, Any]) -> BackendProgress | None:
        entry = status.get("backends", {}).get(backend)
        if entry is None:
            return None
        replicas = entry.get("replicas", {})
        return cls(backend, sum(replicas.get(s, 0) for s in SERVING_STATES),
                   int(entry.get("target_replicas", 0)),
                   replicas.get("STARTING", 0) + replicas.get("RECOVERING", 0),
                   entry.get("failure"), entry.get("placement"))

    def line(self, elapsed_s: float) -> str:
        text = f"backend {self.backend}: {self.running}/{self.target} replicas running"
        if self.starting:
            text += f", {self.starting} starting"
        text += f" ({elapsed_s:.1f}s)"
        if self.failure:
            text += f"; a replica failed to start: {self.failure}"
        if self.placement:
            text += f"; waiting: {self.placement}"
        return text


def describe_backend(backend: str, status: dict[str, Any], elapsed_s: float) -> str:
    progress = BackendProgress.from_status(backend, status)
    if progress is None:
        return f"backend {backend}: not registered yet ({elapsed_s:.1f}s)"
    return progress.line(elapsed_s)


def wants_colour(out: TextIO) -> bool:
    """Colours and live redraws only on a terminal, and never under NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(out, "isatty", lambda: False)())


class StartupWatcher:
    """Shows the start-up of one backend while ``watching(backend)`` is open.

    ``get_status`` is the client's; its errors (a controller restarting) are skipped, the
    next look tries again. The thread is named and ends in ``finally`` of ``watching``.
    """

    def __init__(self, get_status: Callable[[], dict[str, Any]], out: TextIO | None = None,
                 live: bool | None = None, period_s: float = POLL_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._get_status = get_status
        self._out = out or sys.stdout
        self._live = wants_colour(self._out) if live is None else live
        self._period_s = period_s
        self._clock = clock

    @contextlib.contextmanager
    def watching(self, backend: str) -> Iterator[None]:
        stop = threading.Event()
        started = self._clock()
        show = _LiveView(backend, self._out) if self._live else _PlainView(self._out)
        thread = threading.Thread(target=self._follow, args=(backend, started, stop, show),
                                  name=f"serveplane-progress-{backend}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5.0)
            self._look(backend, started, show, final=True)
            show.close()

    def _follow(self, backend: str, started: float, stop: threading.Event, show: Any) -> None:
        while not stop.wait(self._period_s):
            self._look(backend, started, show, final=False)

    def _look(self, backend: str, started: float, show: Any, final: bool) -> None:
        try:
            status = self._get_status()
        except Exception:  # noqa: BLE001 - the controller may be restarting; look again
            return
        show.update(BackendProgress.from_status(backend, status), backend,
                    self._clock() - started, final)


class _PlainView:
    """A line whenever what it says changes (elapsed time aside), and a last one at the end."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: BackendProgress | None = None
        self._lock = threading.Lock()

    def update(self, progress: BackendProgress | None, backend: str, elapsed_s: float,
               final: bool) -> None:
        if progress is None:
            return
        with self._lock:
            if progress == self._last:
                return
            self._last = progress
        print("  " + progress.line(elapsed_s), file=self._out, flush=True)

    def close(self) -> None:
        pass


class _LiveView:
    """A ``rich`` progress bar: backend, running of target, elapsed; failures printed above."""

    def __init__(self, backend: str, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = Console(file=out)
        self._progress = Progress(TextColumn("  [bold]{task.fields[backend]}[/]"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("running"),
                                  TextColumn("[yellow]{task.fields[note]}"), TimeElapsedColumn(),
                                  console=self._console, transient=False)
        self._task = self._progress.add_task("start", total=None, backend=backend, note="")
        self._failures: set[str] = set()
        self._progress.start()

    def update(self, progress: BackendProgress | None, backend: str, elapsed_s: float,
               final: bool) -> None:
        if progress is None:
            return
        note = f"{progress.starting} starting" if progress.starting else ""
        if progress.placement:
            note += f"  waiting: {progress.placement}"
        self._progress.update(self._task, total=max(progress.target, 1), completed=progress.running,
                              note=note)
        if progress.failure and progress.failure not in self._failures:
            self._failures.add(progress.failure)
            self._progress.console.print(f"  [red]! {backend}: a replica failed to start:[/] "
                                         f"{progress.failure}", markup=True, highlight=False)

    def close(self) -> None:
        self._progress.stop()


# -- serveplane status -------------------------------------------------------------------
_STATE_STYLE = {"RUNNING": "green", "UPDATING": "cyan", "STARTING": "yellow", "RECOVERING": "yellow",
                "STOPPING": "magenta"}


def render_status(status: dict[str, Any], rollouts: dict[str, dict[str, Any]], out: TextIO,
                  width: int | None = None) -> None:
    """``serveplane status`` on a terminal: the same columns as the plain table, in colour."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from serveplane.cli_rollout import describe

    console = Console(file=out, highlight=False, width=width)
    backends = Table(title="backends", title_justify="left", title_style="bold")
    for header in ("BACKEND", "RUNNING/TARGET", "STATES", "NOTES"):
        backends.add_column(header)
    for tag, b in sorted(status["backends"].items()):
        running = sum(b["replicas"].get(s, 0) for s in SERVING_STATES)
        target = b["target_replicas"]
        count = Text(f"{running}/{target}", style="green" if running >= target else "yellow")
        states = Text(", ").join(Text(f"{k.lower()}={v}", style=_STATE_STYLE.get(k, ""))
                                 for k, v in sorted(b["replicas"].items())) or Text("-")
        notes = Text()
        if b.get("failure"):
            notes.append(f"! {b['failure']}", style="red")
        if b.get("placement"):
            notes.append(f"  waiting: {b['placement']}", style="yellow")
        backends.add_row(tag, count, states, notes)
    endpoints = Table(title="endpoints", title_justify="left", title_style="bold")
    for header in ("ENDPOINT", "ROUTE", "TRAFFIC", "SHADOWS"):
        endpoints.add_column(header)
    for name, e in sorted(status["endpoints"].items()):
        traffic = " ".join(f"{b}={w:g}" for b, w in sorted(e["traffic"].items()))
        shadows = " ".join(f"{b}={p:g}" for b, p in sorted(e["shadows"].items())) or "-"
        endpoints.add_row(name, e.get("route") or "-", traffic, shadows)
    console.print(backends)
    console.print(endpoints)
    if rollouts:
        table = Table(title="rollouts", title_justify="left", title_style="bold", show_header=False)
        table.add_column("rollout")
        for _, rollout in sorted(rollouts.items()):
            style = {"succeeded": "green", "rolled_back": "red", "aborted": "red"}.get(rollout["state"], "")
            table.add_row(Text(describe(rollout), style=style))
        console.print(table)
    refused = status.get("refused") or []
    for entry in refused:
        console.print(Text(f"! refused state: {entry['error']}", style="bold red"))
    if status.get("checkpoint_warning"):
        console.print(Text(f"! checkpoint: {status['checkpoint_warning']}", style="bold yellow"))
