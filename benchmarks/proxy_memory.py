"""HTTP proxy memory under many large, slow uploads: bounded (this proxy's limits) against
the same proxy with the limits lifted (what it did before they existed: every upload read
and held at once, no body deadline).

N clients each POST a body of B MiB in 256 KiB pieces with a 20 ms pause between pieces,
all at once; a client answered 503 sends again 0.2 s later. Reported: the proxy actor's
resident memory (/proc VmRSS) before, at its peak (VmHWM) and after, the peaks of requests
in flight and of bodies held, and how long all uploads took.
"""

from __future__ import annotations

import argparse
import collections
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import ray

import serveplane

MB = 1024 * 1024


class Sink:
    def __call__(self, request):
        return {"bytes": len(request.body)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slow_upload(port: int, size: int, chunk: int = 256 * 1024, pause_s: float = 0.02) -> str:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        sock.sendall(f"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        sent, piece = 0, b"u" * chunk
        try:
            while sent < size:
                sock.sendall(piece[:size - sent])
                sent += min(chunk, size - sent)
                time.sleep(pause_s)
        except OSError:
            pass
        data = b""
        try:
            while b"\r\n" not in data:
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except OSError:
            pass
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1") else "reset"
    finally:
        sock.close()


def until_accepted(port: int, size: int) -> tuple[str, int]:
    refused = 0
    while True:
        status = slow_upload(port, size)
        if status != "503":
            return status, refused
        refused += 1
        time.sleep(0.2)


def run(label: str, uploads: int, body: int, options: dict) -> dict:
    ns = f"mem-{uuid.uuid4().hex[:6]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns,
                              http_options={"port": port, "max_body_bytes": body, **options})
    try:
        client.create_backend("sink", Sink)
        client.create_endpoint("sink", backend="sink", route="/sink", methods=["POST"])
        base = f"http://127.0.0.1:{port}"
        while "/sink" not in httpx.get(f"{base}/-/routes").json():
            time.sleep(0.05)
        for _ in range(3):
            httpx.post(f"{base}/sink", content=b"w" * body, timeout=120).raise_for_status()
        proxy = client._proxies[0]
        before = ray.get(proxy.statistics.remote())
        started = time.perf_counter()
        with ThreadPoolExecutor(uploads) as pool:
            outcomes = list(pool.map(lambda _: until_accepted(port, body), range(uploads)))
        elapsed = time.perf_counter() - started
        after = ray.get(proxy.statistics.remote())
    finally:
        client.shutdown()
    return {"label": label, "answers": dict(collections.Counter(s for s, _ in outcomes)),
            "refused": sum(n for _, n in outcomes), "before": before["rss_bytes"] / MB,
            "peak": after["peak_rss_bytes"] / MB, "after": after["rss_bytes"] / MB,
            "peak_in_flight": after["peak_in_flight"], "peak_held": after["peak_buffered_body_bytes"] / MB,
            "elapsed": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=48)
    parser.add_argument("--body-mib", type=int, default=8)
    parser.add_argument("--budget-mib", type=int, default=32)
    args = parser.parse_args()
    body = args.body_mib * MB
    ray.init(logging_level="ERROR")
    rows = [
        run("bounded", args.uploads, body, {"max_concurrent_requests": 8, "body_read_timeout_s": 30,
                                            "max_buffered_body_bytes": args.budget_mib * MB}),
        run("limits lifted (baseline)", args.uploads, body, {"max_concurrent_requests": 100_000,
                                                             "body_read_timeout_s": 3600,
                                                             "max_buffered_body_bytes": 2**40}),
    ]
    ray.shutdown()
    print(f"\n{args.uploads} uploads of {args.body_mib} MiB at once (256 KiB every 20 ms), 503s retried after 0.2 s; "
          f"bounded: max_concurrent_requests=8, max_buffered_body_bytes={args.budget_mib} MiB\n")
    print("| proxy | answers | 503s | peak in flight | peak bodies held | RSS before | RSS peak | growth | RSS after | time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['answers']} | {r['refused']} | {r['peak_in_flight']} | {r['peak_held']:.0f} MiB "
              f"| {r['before']:.0f} MiB | {r['peak']:.0f} MiB | +{r['peak'] - r['before']:.0f} MiB "
              f"| {r['after']:.0f} MiB | {r['elapsed']:.1f} s |")


if __name__ == "__main__":
    main()
