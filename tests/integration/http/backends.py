from __future__ import annotations

import asyncio

import serveplane


class Model:
    def __call__(self, request):
        if request.method == "POST":
            data = request.json()
            return {"sum": sum(data["values"]), "path": request.path}
        return {"q": request.query_params.get("q"), "path": request.path}

    @serveplane.http_method
    def text(self, request):
        return "plain text"

    @serveplane.http_method
    def raw(self, request):
        return b"\x00\x01"

    @serveplane.http_method
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


class Exposed:
    """One method of each kind, for the X-SERVE-CALL-METHOD rules."""

    def __call__(self, request):
        return "call"

    def predict(self, request):  # listed in BackendConfig(http_methods=[...]) by the tests
        return "predict"

    @serveplane.http_method
    def marked(self, request):
        return "marked"

    def internal(self, request):  # public, callable by handles, not over HTTP
        return "internal"

    def reconfigure(self, user_config):
        return None

    def check_health(self):
        return None


class Fails:
    def __call__(self, request):
        raise ValueError(f"secret detail {request.query_params.get('n', '')}")


class Sink:
    """Accepts uploads; answers with their size."""

    def __call__(self, request):
        return {"bytes": len(request.body)}


class FuzzTarget:
    """Raises (the user's 500) exactly when the request says "boom"."""

    def __call__(self, request):
        if b"boom" in request.body or any("boom" in v for v in request.query_params.values()):
            raise RuntimeError("the user's code failed, as asked")
        return {"method": request.method, "bytes": len(request.body)}

    @serveplane.http_method
    def echo(self, request):
        return request.body

    def hidden(self, request):
        return "should never be reached over HTTP"


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
