"""The no-sandbox baseline: a plain starlette + onnxruntime OIP v2 endpoint, as thin as it gets.

    python bench/plain_server.py MODEL.onnx [MODEL.onnx ...] PORT

It serves any model whose inputs and outputs are numeric tensors: it reads JSON bodies and bodies in Triton's
binary tensor extension (``Inference-Header-Content-Length``, inputs with ``binary_data_size``), feeds every
input by name, runs the same session options as wasmgate (one intra-op thread), and answers every output in the
same JSON shape as wasmgate, or in the binary extension when the request asks for binary outputs
(``binary_data_output``, or ``binary_data`` on an output). There is no validation beyond what numpy and
onnxruntime do, no sandbox, no pool and no metrics.

One model is served under any name in the path (``/v2/models/ANY/infer``); several are served each under its
file's stem (``resnet.onnx`` at ``/v2/models/resnet/infer``), one session each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

NUMPY = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "UINT8": "u1", "INT32": "<i4", "INT64": "<i8"}
DATATYPES = {np.dtype(v): k for k, v in NUMPY.items()}
HEADER_LENGTH = "inference-header-content-length"


def parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The request's JSON header and its inputs by name, from a JSON or a binary-extension body."""
    offset = int(header_length) if header_length is not None else len(body)
    header = json.loads(body[:offset])
    feed = {}
    for tensor in header["inputs"]:
        dtype = np.dtype(NUMPY[tensor["datatype"]])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            x = np.asarray(tensor["data"], dtype)
        else:
            x = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        feed[tensor["name"]] = x.reshape(tensor["shape"])
    return header, feed


def wants_binary(header: dict[str, Any]) -> bool:
    if (header.get("parameters") or {}).get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in header.get("outputs") or [])


def app_for(*model_paths: str) -> Starlette:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sessions = {Path(p).stem: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in model_paths}
    only = next(iter(sessions.values())) if len(sessions) == 1 else None

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        session = only or sessions[name]
        output_names = [o.name for o in session.get_outputs()]
        header, feed = parse(await request.body(), request.headers.get(HEADER_LENGTH))
        outs = session.run(output_names, feed)
        if not wants_binary(header):
            body = {
                "model_name": name,
                "outputs": [
                    {"name": n, "datatype": DATATYPES[v.dtype], "shape": list(v.shape), "data": v.ravel().tolist()}
                    for n, v in zip(output_names, outs, strict=True)
                ],
            }
            return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
        meta = {
            "model_name": name,
            "outputs": [
                {"name": n, "datatype": DATATYPES[v.dtype], "shape": list(v.shape),
                 "parameters": {"binary_data_size": v.nbytes}}
                for n, v in zip(output_names, outs, strict=True)
            ],
        }  # fmt: skip
        head = json.dumps(meta, separators=(",", ":")).encode()
        return Response(
            b"".join([head, *(np.ascontiguousarray(v).tobytes() for v in outs)]),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(head))},
        )

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(
        routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
    )


if __name__ == "__main__":
    uvicorn.run(
        app_for(*sys.argv[1:-1]), host="127.0.0.1", port=int(sys.argv[-1]), log_level="warning", access_log=False
    )
