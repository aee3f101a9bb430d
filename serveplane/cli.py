"""``serveplane run|apply|status|traffic|shadow|shutdown``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from serveplane.exceptions import ServeplaneError

ADDRESS_FILE = Path(os.environ.get("SERVEPLANE_STATE_DIR", "/tmp/serveplane-cli")) / "ray_address"
DEFAULT_NAMESPACE = "serveplane"


def _prepare_ray_env(start_local: bool) -> None:
    """A local cluster started by ray.init() uses token auth; attach with the same token.
    Ray reads this at import, so it runs before anything imports ray (``main``)."""
    if not start_local and (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _connect_ray(address: str | None, start_local: bool = False) -> None:
    _prepare_ray_env(start_local)
    import ray

    if ray.is_initialized():
        return
    if address is None:
        address = os.environ.get("RAY_ADDRESS")
    if address is None and not start_local and ADDRESS_FILE.exists():
        address = ADDRESS_FILE.read_text().strip()
    if address is None and not start_local:
        address = "auto"
    import logging

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)


def _client(args: argparse.Namespace) -> Any:
    import serveplane

    _connect_ray(args.address)
    return serveplane.connect(namespace=args.namespace)


def format_table(headers: list[str], rows: list[list[str]], gap: int = 2) -> list[str]:
    """Left-aligned columns as wide as their widest cell, ``gap`` spaces apart: a long
    value widens its column instead of running into the next one."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    sep = " " * gap

    def line(cells: list[str]) -> str:
        return sep.join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [line(headers), "-" * len(line(["-" * w for w in widths])), *(line(r) for r in rows)]


def status_table(client: Any) -> str:
    status = client.get_status()
    backend_rows = []
    for tag, b in sorted(status["backends"].items()):
        running = b["replicas"].get("RUNNING", 0) + b["replicas"].get("UPDATING", 0)
        states = ", ".join(f"{k.lower()}={v}" for k, v in sorted(b["replicas"].items())) or "-"
        notes = [f"! {b['failure']}"] if b.get("failure") else []
        if b.get("placement"):
            notes.append(f"waiting: {b['placement']}")
        backend_rows.append([tag, f"{running}/{b['target_replicas']}", states, "  ".join(notes)])
    endpoint_rows = []
    for name, e in sorted(status["endpoints"].items()):
        traffic = " ".join(f"{b}={w:g}" for b, w in sorted(e["traffic"].items()))
        shadows = " ".join(f"{b}={p:g}" for b, p in sorted(e["shadows"].items())) or "-"
        endpoint_rows.append([name, e["route"] or "-", traffic, shadows])
    lines = format_table(["BACKEND", "RUNNING/TARGET", "STATES", ""], backend_rows)
    lines += ["", *format_table(["ENDPOINT", "ROUTE", "TRAFFIC", "SHADOWS"], endpoint_rows)]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    import ray

    import serveplane
    from serveplane.apply import apply
    from serveplane.config import HTTPOptions
    from serveplane.deploy_config import load_config

    config = load_config(args.config)
    namespace = args.namespace or config.namespace or DEFAULT_NAMESPACE
    _connect_ray(args.address, start_local=args.address is None)
    if args.address is None:
        ADDRESS_FILE.parent.mkdir(parents=True, exist_ok=True)
        ADDRESS_FILE.write_text(ray.get_runtime_context().gcs_address)
    http = (config.http or HTTPOptions.model_validate({})).model_copy(
        update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    client = serveplane.start(kv_store=config.kv_store or f"ray://{namespace}", namespace=namespace,
                              http_options=http, detached=args.address is not None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        apply(client, config, Path(args.config).resolve().parent)
        print()
        print(status_table(client))
        print()
        base = client.http_urls[0] if client.http_urls else f"http://{http.host}:{http.port}"
        for endpoint in config.endpoints:
            if endpoint.route:
                print(f"endpoint {endpoint.name}: {base}{endpoint.route}")
        example = config.endpoints[0] if config.endpoints else None
        if example is not None and example.route:
            print(f"\ntry:  curl -s '{base}{example.route}?text=what+a+great+movie'")
        print(f"\nserveplane is serving on {base} (Ctrl-C to stop)", flush=True)
        stop.wait()
    finally:
        print("\nshutting down", flush=True)
        client.shutdown()
        if args.address is None:
            ray.shutdown()
            ADDRESS_FILE.unlink(missing_ok=True)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from serveplane.apply import apply
    from serveplane.deploy_config import load_config

    config = load_config(args.config)  # refused before connecting: nothing applied
    client = _client(args)
    apply(client, config, Path(args.config).resolve().parent, dry_run=args.dry_run)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.json:
        print(json.dumps(client.get_status(), indent=2, default=str))
    else:
        print(status_table(client))
    return 0


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        backend, sep, value = pair.rpartition("=")
        if not sep or not backend:
            raise ServeplaneError(f"traffic weight {pair!r} must look like BACKEND=WEIGHT")
        try:
            weights[backend] = float(value)
        except ValueError:
            raise ServeplaneError(f"traffic weight {pair!r}: {value!r} is not a number") from None
    return weights


def cmd_traffic(args: argparse.Namespace) -> int:
    weights = _parse_weights(args.weights)
    client = _client(args)
    client.set_traffic(args.endpoint, weights)
    print(f"endpoint {args.endpoint}: traffic " + " ".join(f"{b}={w:g}" for b, w in sorted(weights.items())))
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    client = _client(args)
    client.shadow_traffic(args.endpoint, args.backend, args.proportion)
    print(f"endpoint {args.endpoint}: shadow {args.backend}={args.proportion:g}")
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    client = _client(args)
    client.shutdown()
    print("serveplane shut down")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serveplane", description="serve models on Ray")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: the one "
                        "`serveplane run` started, $RAY_ADDRESS, or auto)")
    parser.add_argument("--namespace", default=None, help=f"serveplane namespace (default {DEFAULT_NAMESPACE})")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start Ray (unless --address), the controller and proxy, apply CONFIG")
    run.add_argument("config")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.set_defaults(func=cmd_run)
    ap = sub.add_parser("apply", help="make the running cluster match CONFIG; prints the diff")
    ap.add_argument("config")
    ap.add_argument("--dry-run", action="store_true")
    ap.set_defaults(func=cmd_apply)
    st = sub.add_parser("status", help="backends, replicas and endpoints")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    tr = sub.add_parser("traffic", help="set an endpoint's traffic: serveplane traffic EP a=0.9 b=0.1")
    tr.add_argument("endpoint")
    tr.add_argument("weights", nargs="+")
    tr.set_defaults(func=cmd_traffic)
    sh = sub.add_parser("shadow", help="shadow a share of an endpoint's traffic to a backend (0 removes)")
    sh.add_argument("endpoint")
    sh.add_argument("backend")
    sh.add_argument("proportion", type=float)
    sh.set_defaults(func=cmd_shadow)
    sd = sub.add_parser("shutdown", help="stop every replica, the proxy and the controller")
    sd.set_defaults(func=cmd_shutdown)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run" and args.namespace is None:
        args.namespace = DEFAULT_NAMESPACE
    # before any command imports ray (``serveplane apply`` did, and then could not attach)
    _prepare_ray_env(start_local=args.command == "run" and args.address is None)
    try:
        return args.func(args)
    except (ServeplaneError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
