"""Starting a proxy with given options, and reading its log, for the HTTP tests."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import time
import uuid
from typing import Any, Iterator

import httpx
import ray

import serveplane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def proxy(**http_options: Any) -> Iterator[tuple[Any, str]]:
    """A controller and an HTTP proxy with these options in a namespace of their own."""
    ns = f"h-{uuid.uuid4().hex[:8]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns,
                              http_options={"port": port, **http_options})
    try:
        yield client, f"http://127.0.0.1:{port}"
    finally:
        client.shutdown()


def statistics(client: Any) -> dict[str, Any]:
    return ray.get(client._proxies[0].statistics.remote(), timeout=30)


def wait_route(base: str, route: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while route not in httpx.get(f"{base}/-/routes", headers=headers).json():
        assert time.monotonic() < deadline, f"route {route} never appeared"
        time.sleep(0.05)


def worker_log(pid: int) -> str:
    """Everything the Ray worker process ``pid`` wrote to its log files."""
    session = ray._private.worker._global_node.get_session_dir_path()
    text = []
    for path in glob.glob(os.path.join(session, "logs", f"*-{pid}.*")):
        with open(path, errors="replace") as f:
            text.append(f.read())
    return "\n".join(text)


def upload_until_accepted(port: int, path: str, size: int, chunk: int, pause_s: float,
                          deadline_s: float = 120.0) -> tuple[str, int]:
    """``slow_upload`` again after each 503, as a client honouring Retry-After does (here
    after 0.2 s); the final status and how many 503s it took."""
    refused = 0
    deadline = time.monotonic() + deadline_s
    while True:
        status = slow_upload(port, path, size, chunk, pause_s)
        if status != "503" or time.monotonic() > deadline:
            return status, refused
        refused += 1
        time.sleep(0.2)


def slow_upload(port: int, path: str, size: int, chunk: int, pause_s: float) -> str:
    """POST ``size`` bytes in ``chunk``-byte pieces with a pause between them; the status
    the proxy answered ("200", "503", ...) or "reset" when it closed before answering."""
    import socket as socket_module

    sock = socket_module.create_connection(("127.0.0.1", port), timeout=60)
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        piece = b"u" * chunk
        sent = 0
        try:
            while sent < size:
                sock.sendall(piece[:size - sent])
                sent += min(chunk, size - sent)
                time.sleep(pause_s)
        except OSError:
            pass  # answered early (503, 408, 413) and closed: read what it said
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
