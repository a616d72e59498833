"""The app class of the gateway and of a runner: Starlette, with the inference route taken before Starlette's
router and middleware stack.

``POST /v2/models/{name}/infer`` and ``POST /v2/models/{name}/versions/{version}/infer`` carry the traffic. On
Starlette's own path each such request goes through three middlewares and a match against every route ahead
of the handler: tens of microseconds of a request that costs a few hundred. :class:`GatewayApp` matches those
two paths with one regular expression and calls the same handler (``gateway.oip.infer_asgi``) with the same path
parameters, its errors answered by the same handlers (``gateway.http_errors.EXCEPTION_HANDLERS``) and anything
unexpected by the same middleware (``UnexpectedErrors``): status, body, headers, metrics and logs are those of
the Starlette path. Every other request (other paths, other methods, a server mounted under a ``root_path``)
goes to Starlette as before.
"""

from __future__ import annotations

import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway import oip
from gateway.http_errors import UnexpectedErrors, answer_error

#: The two inference paths, as Starlette's routes ``{name}`` and ``{version}`` match them (no '/').
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class GatewayApp(Starlette):
    """Starlette, with the inference route short-cut (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                name, version = match.groups()
                scope["app"] = self
                scope["path_params"] = {"name": name} if version is None else {"name": name, "version": version}
                await _LEAN(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _infer(scope: Scope, receive: Receive, send: Send) -> None:
    try:
        response = await oip.infer_asgi(scope, receive)
    except Exception as exc:
        response = await answer_error(Request(scope, receive), exc)  # raises again what no handler takes
    await response(scope, receive, send)


_LEAN = UnexpectedErrors(_infer)
