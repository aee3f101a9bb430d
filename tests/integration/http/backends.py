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


def native_echo(*args, **kwargs):
    """Native convention: arguments straight through (an HTTP call passes one HTTPRequest)."""
    if args and type(args[0]).__name__ == "HTTPRequest":
        return {"type": "HTTPRequest", "q": args[0].query_params}
    return {"args": list(args), "kwargs": kwargs}


class Typed:
    """Native, but asks for a real starlette Request by annotation."""

    async def __call__(self, request: "Request"):  # noqa: F821 - resolved by name
        return {"type": type(request).__module__ + "." + type(request).__name__,
                "json": await request.json(), "q": dict(request.query_params)}


class Classic:
    """Ray Serve 1.x convention: one request object per call."""

    async def __call__(self, request):
        body = await request.body()
        return {"type": type(request).__name__, "method": request.method,
                "q": dict(request.query_params),
                "body": body.decode() if isinstance(body, bytes) else body}


def whose_instance(request):
    """serveplane.connect() inside a backend: the backend's own instance."""
    import serveplane

    return serveplane.connect()._namespace
