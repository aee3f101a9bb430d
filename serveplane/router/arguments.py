"""``Response`` arguments: a handle call whose arguments are other calls' responses.

The value goes replica to replica: the call carries the ``ObjectRef`` of each argument's
current attempt, never its value through the caller. A router-side batch's ref holds every
caller's answer, so a batched argument is awaited (in the background) and its own answer
put in the object store once. An argument whose producer died is awaited to its end (its
own retries run) before the call is sent again; its error is the call's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serveplane.router.request import RoutedRequest
    from serveplane.router.transport import Transport

_UNSET = object()


def responses_in(args: tuple, kwargs: dict) -> list[Any]:
    from serveplane.router.response import Response  # the caller's side; no import at load

    return [v for v in (*args, *kwargs.values()) if isinstance(v, Response)]


async def settle(request: RoutedRequest, producer_died: bool) -> None:
    """Wait until every argument is sent (``producer_died``: final); a batched one, final."""
    for dep in responses_in(request.args, request.kwargs):
        if dep.request.batched:
            request.settled[id(dep)] = await dep  # put in the object store once
        elif producer_died:
            await dep  # its final attempt's ref is passed on, not the value
        else:
            await dep.routed()


def resolved(request: RoutedRequest, transport: Transport) -> tuple[tuple, dict]:
    """The call's arguments with each ``Response`` replaced by its ref (or settled answer)."""
    return _resolved(request.args, request, transport), {
        k: _resolved((v,), request, transport)[0] for k, v in request.kwargs.items()}


def _resolved(values: tuple, request: RoutedRequest, transport: Transport) -> tuple:
    from serveplane.router.response import Response

    out = []
    for value in values:
        if isinstance(value, Response):
            settled = request.settled.get(id(value), _UNSET)
            value = transport.put(settled) if settled is not _UNSET else value.argument_ref()
        out.append(value)
    return tuple(out)
