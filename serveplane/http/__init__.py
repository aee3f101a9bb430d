"""HTTP ingress: a starlette app served by uvicorn inside a Ray actor."""

from serveplane.http.request import HTTPRequest

__all__ = ["HTTPRequest"]
