"""The floor of any Python server here: uvicorn (uvloop, httptools, no access log, as wasmgate runs it) with a raw
ASGI app that reads each request's body and answers a fixed body, with no parsing, no model and no framework.

    python bench/floor_server.py PORT

What a request costs this server is what the HTTP layer alone costs every Python server in bench/http_load.py:
a server's CPU per request minus this one's is its own work. It answers the digits case's JSON shape (a
constant), so wrk's traffic is alike; nothing checks what it answers.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

BODY = (
    b'{"model_name":"digits","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],'
    b'"data":[0]},{"name":"probabilities","datatype":"FP32","shape":[1,10],"data":[1.0,0.0,0.0,0.0,0.0,0.0,'
    b"0.0,0.0,0.0,0.0]}]}"
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
        loop="uvloop", http="httptools",
    )  # fmt: skip
