"""KServe's Python model server (``kserve.ModelServer``) serving the same ONNX model with onnxruntime.

    KSERVE_MODEL=digits KSERVE_MODEL_PATH=model.onnx python bench/kserve_server.py --http_port 8081

Runs under a separate environment that has ``kserve`` installed (it is not a wasmgate dependency); see
``bench/http_load.py --kserve-python``. Same session options as the other servers: one intra-op thread.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


class OnnxModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:  # type: ignore[no-untyped-def]
        x = payload.inputs[0].as_numpy()
        outputs = []
        for name, value in zip(self.output_names, self.session.run(None, {self.input_name: x}), strict=True):
            out = InferOutput(name=name, shape=list(value.shape), datatype=DTYPES[value.dtype])
            out.set_data_from_numpy(value, binary_data=False)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    ModelServer(enable_grpc=False, workers=1).start(
        [OnnxModel(os.environ["KSERVE_MODEL"], os.environ["KSERVE_MODEL_PATH"])]
    )
