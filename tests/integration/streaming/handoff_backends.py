"""User code for the handed-off body tests (importable by replica workers)."""

from __future__ import annotations

import asyncio

import serveplane


class Parts:
    @serveplane.http_method
    async def parts(self, request):
        from starlette.responses import StreamingResponse

        n = int(request.query_params.get("n", "5"))
        gap_s = float(request.query_params.get("gap", "0.4"))

        async def body():
            for i in range(n):
                if i:
                    await asyncio.sleep(gap_s)
                yield f"part{i}\n"

        return StreamingResponse(body(), media_type="text/plain")
