"""The no-sandbox baseline: a plain starlette + onnxruntime OIP v2 JSON endpoint, as thin as it gets.

    python bench/plain_server.py MODEL.onnx PORT

It parses the same JSON body, runs the same session options (one intra-op thread) and answers the same JSON
shape as wasmgate, with no validation beyond what numpy does, no sandbox, no pool and no metrics.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def app_for(model_path: str) -> Starlette:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        doc = json.loads(await request.body())
        inp = doc["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        outs = session.run(None, {input_name: x})
        body = {
            "model_name": request.path_params["name"],
            "outputs": [
                {"name": n, "datatype": DTYPES[v.dtype], "shape": list(v.shape), "data": v.ravel().tolist()}
                for n, v in zip(output_names, outs, strict=True)
            ],
        }
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(
        routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
    )


if __name__ == "__main__":
    uvicorn.run(app_for(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
