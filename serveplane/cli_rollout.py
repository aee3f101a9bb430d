"""``serveplane rollout``: start, watch, pause, resume and abort progressive rollouts.

    serveplane rollout ENDPOINT BACKEND --steps 0.05,0.25,1 --interval 60 --max-error-rate 0.01
    serveplane rollout status ENDPOINT      # a live view until the rollout ends (--once: one look)
    serveplane rollout pause|resume|abort ENDPOINT
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from serveplane.exceptions import InvalidConfigError

ACTIONS = ("status", "pause", "resume", "abort")
FINAL = ("succeeded", "rolled_back", "aborted")


def add_rollout_commands(sub: Any, client_of: Callable[[argparse.Namespace], Any]) -> None:
    ro = sub.add_parser("rollout", help="progressive rollouts: serveplane rollout EP BACKEND --steps ..., "
                        "or serveplane rollout status|pause|resume|abort EP")
    ro.add_argument("words", nargs="+", metavar="ENDPOINT BACKEND | ACTION ENDPOINT")
    ro.add_argument("--steps", default="0.01,0.05,0.25,0.5,1", help="canary weights, comma-separated")
    ro.add_argument("--interval", type=float, default=60.0, help="minimum seconds per step")
    ro.add_argument("--shadow", type=float, default=0.0, help="seconds of shadow traffic first")
    ro.add_argument("--max-error-rate", type=float, default=None)
    ro.add_argument("--max-latency-ratio", type=float, default=None)
    ro.add_argument("--min-shadow-agreement", type=float, default=None)
    ro.add_argument("--min-requests", type=int, default=None)
    ro.add_argument("--watch", action="store_true", help="after starting, show the live view until it ends")
    ro.add_argument("--once", action="store_true", help="status: print once instead of following")
    ro.set_defaults(func=lambda args: cmd_rollout(args, client_of))


def describe(rollout: dict[str, Any]) -> str:
    readings = rollout.get("readings") or {}
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in readings.items() if v is not None)
    step = "shadow phase" if rollout["step"] < 0 else f"step {rollout['step'] + 1}/{len(rollout['steps'])}"
    line = (f"{rollout['endpoint']} -> {rollout['backend']}: {rollout['state']}, {step}, "
            f"weight {rollout['weight']:g}")
    if rollout.get("reason"):
        line += f"; {rollout['reason']}"
    return line + (f"  [{shown}]" if shown else "")


def watch(client: Any, endpoint: str, out: Any = sys.stdout, period_s: float = 1.0) -> dict[str, Any]:
    """Show the rollout until it ends; returns the final rollout. On a terminal the line is
    redrawn in place with fresh readings; elsewhere (a log, a pipe) a line is printed only
    when the state, the step or the reason changes."""
    tty = getattr(out, "isatty", lambda: False)()
    last = None
    while True:
        rollout = client.get_rollout(endpoint)
        key = describe({**rollout, "readings": None})
        if tty:
            print("\r\033[K" + describe(rollout), end="" if rollout["state"] not in FINAL else "\n",
                  file=out, flush=True)
        elif key != last:
            print(describe(rollout), file=out, flush=True)
        last = key
        if rollout["state"] in FINAL:
            for entry in rollout["history"]:
                print(f"  {time.strftime('%H:%M:%S', time.localtime(entry['at']))}  {entry['decision']}",
                      file=out)
            return rollout
        time.sleep(period_s)


def _steps(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidConfigError(f"--steps {text!r} must be comma-separated numbers, e.g. 0.05,0.25,1") from None


def cmd_rollout(args: argparse.Namespace, client_of: Callable[[argparse.Namespace], Any]) -> int:
    words = args.words
    if words[0] in ACTIONS:
        if len(words) != 2:
            raise InvalidConfigError(f"serveplane rollout {words[0]} takes one ENDPOINT, got {words[1:]}")
        client = client_of(args)
        endpoint = words[1]
        if words[0] == "status":
            if args.once:
                print(describe(client.get_rollout(endpoint)))
            else:
                watch(client, endpoint)
            return 0
        rollout = getattr(client, f"{words[0]}_rollout")(endpoint)
        print(describe(rollout))
        return 0
    if len(words) != 2:
        raise InvalidConfigError("usage: serveplane rollout ENDPOINT BACKEND [--steps ...] or "
                                 "serveplane rollout status|pause|resume|abort ENDPOINT")
    guards = {k: v for k, v in (("max_error_rate", args.max_error_rate),
                                ("max_latency_ratio", args.max_latency_ratio),
                                ("min_shadow_agreement", args.min_shadow_agreement),
                                ("min_requests", args.min_requests)) if v is not None}
    client = client_of(args)
    rollout = client.start_rollout(words[0], words[1], steps=_steps(args.steps), interval_s=args.interval,
                                   guards=guards, shadow_s=args.shadow)
    print(describe(rollout))
    if args.watch:
        final = watch(client, words[0])
        return 0 if final["state"] == "succeeded" else 1
    return 0


def rollout_lines(status: dict[str, Any], rollouts: dict[str, dict[str, Any]]) -> list[str]:
    """The ROLLOUTS section of ``serveplane status`` (empty when none ever ran)."""
    if not rollouts:
        return []
    return ["", "ROLLOUTS", "-" * 80] + [describe(r) for _, r in sorted(rollouts.items())]
