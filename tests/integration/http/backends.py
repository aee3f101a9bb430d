from __future__ import annotations

import asyncio


class Model:
    def __call__(self, request):
        if request.method == "POST":
            data = request.json()
            return {"sum": sum(data["values"]), "path": request.path}
        return {"q": request.query_params.get("q"), "path": request.path}

    def text(self, request):
        return "plain text"

    def raw(self, request):
        return b"\x00\x01"

    def session(self, request):
        return {"session": request.headers.get("x-serve-session-id")}


class Slow:
    async def __call__(self, request):
        await asyncio.sleep(float(request.query_params.get("s", "2")))
        return "late"


def starlette_response(request):
    from starlette.responses import PlainTextResponse, StreamingResponse

    if request.query_params.get("stream"):
        return StreamingResponse(iter([b"a", b"b", b"c"]), media_type="text/plain")
    return PlainTextResponse("teapot", status_code=418)


def answer_a(request):
    return "a"


def answer_b(request):
    return "b"
