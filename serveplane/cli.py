"""``serveplane run|apply|status|traffic|shadow|rollout|dashboard|shutdown|migrate-state``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from serveplane.cli_rollout import add_rollout_commands, rollout_lines
from serveplane import cli_state
from serveplane.exceptions import ServeplaneError
from serveplane.progress import render_status, wants_colour

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
    if address is None and not start_local:
        address = cli_state.read_address()
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


def _rollouts(client: Any, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: client.get_rollout(n) for n, e in status["endpoints"].items() if e.get("rollout")}


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
    lines += rollout_lines(status, _rollouts(client, status))
    refused = status.get("refused") or []
    if refused:
        lines += ["", f"REFUSED STATE: {len(refused)} item(s) of the store not loaded, never run "
                      f"(state key {status['state_key']['id']}, {status['state_key']['source']})",
                  "-" * 80]
        lines += [f"! {entry['error']}" for entry in refused]
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
        cli_state.write_address(ray.get_runtime_context().gcs_address)
    given = {"host": args.host, "port": args.port, "ssl_certfile": args.ssl_certfile,
             "ssl_keyfile": args.ssl_keyfile, "ssl_ca_certs": args.ssl_ca_certs}
    http = HTTPOptions.model_validate({**(config.http or HTTPOptions()).model_dump(),
                                       **{k: v for k, v in given.items() if v is not None}})
    client = serveplane.start(kv_store=config.kv_store or f"ray://{namespace}", namespace=namespace,
                              http_options=http, detached=args.address is not None,
                              state_key_file=args.state_key_file, grpc_options=config.grpc)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        apply(client, config, Path(args.config).resolve().parent, watch=_watcher(client))
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
        for address in client.grpc_addresses:
            print(f"gRPC: {address}")
        print(f"dashboard: {base}/-/dashboard  (serveplane dashboard prints it again)")
        print(f"\nserveplane is serving on {base} (Ctrl-C to stop)", flush=True)
        stop.wait()
    finally:
        print("\nshutting down", flush=True)
        client.shutdown()
        if args.address is None:
            ray.shutdown()
            cli_state.forget_address()
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from serveplane.apply import apply
    from serveplane.deploy_config import load_config

    config = load_config(args.config)  # refused before connecting: nothing applied
    client = _client(args)
    apply(client, config, Path(args.config).resolve().parent, dry_run=args.dry_run,
          watch=_watcher(client))
    return 0


def _watcher(client: Any) -> Any:
    from serveplane.progress import StartupWatcher

    return StartupWatcher(client.get_status).watching


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.json:
        print(json.dumps(client.get_status(), indent=2, default=str))
    elif wants_colour(sys.stdout):
        status = client.get_status()
        render_status(status, _rollouts(client, status), sys.stdout)
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


def dashboard_urls(namespace: str, api_key: str | None = None) -> list[str]:
    """The dashboard's URL on every proxy of the namespace; a proxy bound to every address
    (0.0.0.0 / ::) is named by its node's address, so the URL works from a laptop too."""
    import ray

    from serveplane.dashboard.server import PREFIX
    from serveplane.grpc.start import PROXY_NAME_PREFIX as GRPC_PROXY_PREFIX
    from serveplane.visibility import proxy_actors

    node_ips = {n["NodeID"]: n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    urls = []
    for name, actor in sorted(proxy_actors(namespace)):
        if name.startswith(GRPC_PROXY_PREFIX):
            continue  # a gRPC proxy serves no dashboard
        base = ray.get(actor.ready.remote(), timeout=30)
        host = base.split("://", 1)[1].rsplit(":", 1)[0]
        if host in ("0.0.0.0", "::", "[::]"):
            ip = node_ips.get(name.rpartition(":")[2])
            base = base.replace(host, ip, 1) if ip else base
        urls.append(f"{base}{PREFIX}" + (f"?key={quote(api_key, safe='')}" if api_key else ""))
    return urls


def browser_available() -> bool:
    """A browser can be opened here: a display, or a platform that always has one."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER"))


def cmd_dashboard(args: argparse.Namespace) -> int:
    _client(args)  # refuses with a clear error when no controller runs
    urls = dashboard_urls(args.namespace, args.api_key or os.environ.get("SERVEPLANE_API_KEY"))
    if not urls:
        raise ServeplaneError(f"namespace {args.namespace!r} runs no HTTP proxy, so no dashboard; start "
                              "serveplane with http_options (serveplane run does)")
    for url in urls:
        print(f"dashboard: {url}")
    if not args.no_browser and browser_available():
        import webbrowser

        webbrowser.open(urls[0])
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    client = _client(args)
    client.shutdown()
    print("serveplane shut down")
    return 0


def cmd_migrate_state(args: argparse.Namespace) -> int:
    from serveplane.kv_store import open_store
    from serveplane.kv_store.migrate import migrate_namespace, plan_migration
    from serveplane.redact import redact_url
    from serveplane.state_key import resolve_state_key

    url = args.kv_store or f"ray://{args.namespace}"
    key = resolve_state_key(args.state_key_file)
    controller = _running_controller(args, needs_ray=url.startswith("ray://"))
    if controller is not None:
        running = controller.get_status()["state_key"]
        if running["id"] != key.id:
            raise ServeplaneError(
                f"the running controller of namespace {args.namespace!r} uses state key {running['id']} "
                f"({running['source']}); this command resolved {key.describe()}: run it with the "
                "controller's key ($SERVEPLANE_STATE_KEY or --state-key-file)")
    namespace = f"serveplane/{args.namespace}"
    approved = args.item or None
    store = open_store(url)
    try:
        if args.dry_run:
            report = plan_migration(store, namespace, key, approved)
        else:
            report = migrate_namespace(store, namespace, key, approved)
    finally:
        store.close()
    print(f"namespace {namespace!r} in {redact_url(url)}, under {key.describe()}")
    if report.guarded:
        print(f"  guarded: {report.guarded}; only the items you name with --item are signed")
    for item in report.items:
        state = "+" if report.guarded is None or item.safe or item.id in set(approved or ()) else "?"
        print(f"  {state} {item.id}  {item.shown}")
    if report.log_resealed:
        print("  + an unfinished change of the previous format, rolled back")
    for where, why in sorted(report.refused.items()):
        print(f"  ! not migrated: {why}")
    for item_id in report.changed_by_roll_back:
        print(f"  ! {item_id} changed when the unfinished change was rolled back: run --dry-run again")
    migrated = f"{len(report.records)} record(s) and {len(report.blobs)} blob(s)"
    unnamed = [item.id for item in report.unapproved() if item.id not in set(approved or ())]
    if not report.needed and not unnamed:
        print(f"nothing to migrate ({report.already} item(s) already authenticated)")
    elif args.dry_run:
        print(f"dry run: would migrate {migrated}; nothing was written")
        if unnamed:
            print("check what each '?' item holds; to sign those you checked, run:\n  serveplane "
                  f"--namespace {args.namespace} migrate-state " + " ".join(f"--item {i}" for i in unnamed))
    elif report.needed:
        print(f"migrated {migrated} (epoch {report.epoch}); {report.already} item(s) were already authenticated")
        if controller is not None:
            controller.restart_controller(report.epoch or 0)
            print(f"restarted the controller of namespace {args.namespace!r}: it loaded the migrated state")
        else:
            print("restart the namespace's controller (if one runs) so that it loads the migrated state")
    else:
        print("nothing migrated: none of the named items is a candidate")
    return 0


def cmd_forget_high_water_mark(args: argparse.Namespace) -> int:
    from serveplane.kv_store.high_water import high_water_for
    from serveplane.redact import redact_url

    _connect_ray(args.address)
    mark = high_water_for(args.kv_store, f"serveplane/{args.namespace}")
    if mark is None:
        raise ServeplaneError(
            f"store {redact_url(args.kv_store)} keeps no high-water mark (only sqlite:// and redis:// "
            "stores do, in the cluster's GCS)")
    before = mark.read()
    mark.forget()
    print(f"forgot the high-water mark of {mark.shown}"
          + (f" (sequence {before[1]}, epoch {before[0]})" if before else " (none was set)")
          + "; the next controller starts on the store as it is")
    return 0


def _running_controller(args: argparse.Namespace, needs_ray: bool) -> Any:
    """A client of the namespace's running controller, or None (Ray is joined only when the
    store is the GCS KV or an address is known)."""
    if not (needs_ray or args.address or os.environ.get("RAY_ADDRESS") or cli_state.read_address()):
        return None
    import serveplane
    from serveplane.exceptions import ControllerUnavailableError

    _connect_ray(args.address)
    try:
        return serveplane.connect(namespace=args.namespace)
    except ControllerUnavailableError:
        return None


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
    run.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this PEM certificate (chain); "
                     "re-read when it changes (overrides the file's http: section)")
    run.add_argument("--ssl-keyfile", default=None, help="the PEM private key of --ssl-certfile")
    run.add_argument("--ssl-ca-certs", default=None, help="mutual TLS: clients must present a certificate "
                     "from one of these PEM CAs")
    run.add_argument("--state-key-file", default=None, help="the state key's file (default: "
                     "$SERVEPLANE_STATE_KEY, else ~/.config/serveplane/state-key, created 0600)")
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
    db = sub.add_parser("dashboard", help="print the live dashboard's URL (and open it when a browser is at hand)")
    db.add_argument("--api-key", default=None, help="an API key to put in the URL, when the proxy needs one "
                    "(default $SERVEPLANE_API_KEY)")
    db.add_argument("--no-browser", action="store_true", help="only print the URL")
    db.set_defaults(func=cmd_dashboard)
    sd = sub.add_parser("shutdown", help="stop every replica, the proxy and the controller")
    sd.set_defaults(func=cmd_shutdown)
    add_rollout_commands(sub, _client)
    mg = sub.add_parser("migrate-state", help="authenticate, once, state the previous (unauthenticated) "
                        "format wrote, under the state key; restarts the running controller")
    mg.add_argument("--kv-store", default=None, help="the store's URL (default ray://NAMESPACE)")
    mg.add_argument("--state-key-file", default=None, help="as for run")
    mg.add_argument("--dry-run", action="store_true", help="list what would be signed, with each item's "
                    "content and id; write nothing")
    mg.add_argument("--item", action="append", default=None, metavar="ID",
                    help="sign this item (an id --dry-run lists); required, item by item, in a namespace "
                    "that already holds authenticated state or epoch claims")
    mg.set_defaults(func=cmd_migrate_state)
    fh = sub.add_parser("forget-high-water-mark", help="accept a store restored to an older snapshot on "
                        "purpose: drop the mark of its last commit that the controller checks at start")
    fh.add_argument("--kv-store", required=True, help="the store's URL (sqlite:// or redis://)")
    fh.set_defaults(func=cmd_forget_high_water_mark)
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
