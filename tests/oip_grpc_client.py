"""Standard OIP v2 gRPC clients, unchanged, run against a gateway in a process of their own:
``python -m tests.oip_grpc_client CLIENT ADDRESS CALLS OUT``.

``tritonclient.grpc`` and ``kserve`` cannot share a process: the modules each generates from the protocol's
proto put the same names (``inference.ServerLiveRequest``, ...) in protobuf's default descriptor pool, and the
second to be imported fails. So tests/test_oip_grpc.py runs each client here, in a child process: CLIENT is
``triton`` or ``kserve``; CALLS a JSON file of calls to make, in order; OUT the JSON file their results are
written to, one per call. A call is ``{"op": ..., ...}``:

- ``live``, ``ready``, ``server_metadata``; ``model_ready`` and ``model_metadata`` with ``model``: what the
  client answers (metadata as a dict);
- ``infer`` with ``model``, ``inputs`` (``[{"name", "datatype", "shape", "data"}]``, data flat; BYTES as
  strings), ``outputs`` (names, or absent for all), ``raw`` (kserve: numpy arrays, sent as
  raw_input_contents, else lists, sent as typed contents; tritonclient always sends raw contents),
  ``headers`` (metadata), and for tritonclient ``version``, ``id`` and ``parameters``:
  ``{"outputs": {name: {"datatype", "shape", "data"}}}`` (tritonclient: also the answer's ``id`` and
  ``version``).

A call that fails gives ``{"error": {"code": "NOT_FOUND", "message": ...}}``, the gRPC status the client saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def array(spec: dict[str, Any]) -> np.ndarray:
    """An input's data as the numpy array a client is given (BYTES: bytes objects)."""
    data = spec["data"]
    if spec["datatype"] == "BYTES":
        data = [x.encode() for x in data]
    return np.asarray(data, dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])


def tensor(datatype: str, value: np.ndarray) -> dict[str, Any]:
    """An output as JSON: its datatype, shape and flat data (BYTES as text)."""
    flat = value.reshape(-1).tolist()
    if datatype == "BYTES":
        flat = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return {"datatype": datatype, "shape": list(value.shape), "data": flat}


def run_triton(address: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import tritonclient.grpc as triton
    from google.protobuf.json_format import MessageToDict
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(address)
    results: list[dict[str, Any]] = []
    for call in calls:
        op = call["op"]
        try:
            if op == "live":
                result: dict[str, Any] = {"value": client.is_server_live()}
            elif op == "ready":
                result = {"value": client.is_server_ready()}
            elif op == "model_ready":
                result = {"value": client.is_model_ready(call["model"], headers=call.get("headers"))}
            elif op == "server_metadata":
                result = {"value": MessageToDict(client.get_server_metadata())}
            elif op == "model_metadata":
                metadata = client.get_model_metadata(call["model"], headers=call.get("headers"))
                result = {"value": MessageToDict(metadata)}
            else:
                inputs = []
                for spec in call["inputs"]:
                    x = triton.InferInput(spec["name"], spec["shape"], spec["datatype"])
                    x.set_data_from_numpy(array(spec))
                    inputs.append(x)
                wanted = [triton.InferRequestedOutput(n) for n in call.get("outputs", [])] or None
                answer = client.infer(
                    call["model"],
                    inputs,
                    model_version=call.get("version", ""),
                    outputs=wanted,
                    request_id=call.get("id", ""),
                    headers=call.get("headers"),
                    parameters=call.get("parameters"),
                )
                response = answer.get_response()
                outputs = {o.name: tensor(o.datatype, answer.as_numpy(o.name)) for o in response.outputs}
                result = {"outputs": outputs, "id": response.id, "version": response.model_version}
        except InferenceServerException as exc:
            result = {"error": {"code": str(exc.status()).removeprefix("StatusCode."), "message": exc.message()}}
        results.append(result)
    client.close()
    return results


async def run_kserve(address: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    client = InferenceGRPCClient(address, retries=0)
    results: list[dict[str, Any]] = []
    for call in calls:
        op = call["op"]
        headers = list(call.get("headers", {}).items()) or None
        try:
            if op == "live":
                result: dict[str, Any] = {"value": await client.is_server_live()}
            elif op == "ready":
                result = {"value": await client.is_server_ready()}
            elif op == "model_ready":
                result = {"value": await client.is_model_ready(call["model"], headers=headers)}
            elif op == "infer":
                inputs = []
                for spec in call["inputs"]:
                    data = array(spec) if call.get("raw") else array(spec).reshape(-1).tolist()
                    inputs.append(InferInput(spec["name"], spec["shape"], spec["datatype"], data=data))
                wanted = [RequestedOutput(n) for n in call.get("outputs", [])] or None
                request = InferRequest(call["model"], inputs, request_outputs=wanted)
                answer = await client.infer(request, headers=headers)
                result = {"outputs": {o.name: tensor(o.datatype, o.as_numpy()) for o in answer.outputs}}
            else:
                raise ValueError(f"kserve's gRPC client has no call for {op!r}")
        except grpc.aio.AioRpcError as exc:
            result = {"error": {"code": exc.code().name, "message": exc.details()}}
        results.append(result)
    await client.close()
    return results


def main() -> None:
    client, address, calls_file, out = sys.argv[1:]
    calls = json.loads(Path(calls_file).read_text())
    results = run_triton(address, calls) if client == "triton" else asyncio.run(run_kserve(address, calls))
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
