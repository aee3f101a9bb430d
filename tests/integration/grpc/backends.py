"""Backends of the gRPC proxy's tests: they implement ``echo.proto``'s methods."""

from __future__ import annotations

import asyncio
import os

from serveplane.context import current_session_id
from tests.integration.grpc import echo_pb2


class Echo:
    """``Say`` (unary), ``Count`` (a generator: server streaming), and counters the tests read
    through a handle: calls seen, calls started, calls cancelled while they ran."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.running = 0
        self.cancelled = 0

    async def Say(self, request: echo_pb2.EchoRequest) -> echo_pb2.EchoReply:
        self.calls += 1
        self.running += 1
        try:
            if request.sleep_s:
                await asyncio.sleep(request.sleep_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        if request.fail:
            raise ValueError("secret detail 42 from the backend")
        return echo_pb2.EchoReply(text=request.text, backend=self.name, pid=os.getpid(),
                                  session=current_session_id.get() or "")

    async def Count(self, request: echo_pb2.EchoRequest):
        self.calls += 1
        self.running += 1
        try:
            for i in range(request.n):
                if request.sleep_s:
                    await asyncio.sleep(request.sleep_s)
                if request.fail and i == 1:
                    raise ValueError("secret detail 43 from the backend")
                yield echo_pb2.EchoReply(text=request.text, backend=self.name, index=i, pid=os.getpid())
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    def _hidden(self, request: echo_pb2.EchoRequest) -> echo_pb2.EchoReply:
        return echo_pb2.EchoReply(text="private")

    def counters(self) -> dict[str, int]:
        return {"calls": self.calls, "running": self.running, "cancelled": self.cancelled, "pid": os.getpid()}


class Other:
    def Ping(self, request: echo_pb2.EchoRequest) -> echo_pb2.EchoReply:
        return echo_pb2.EchoReply(text="pong:" + request.text, backend="other")
