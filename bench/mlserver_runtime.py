"""A minimal MLServer runtime for an ONNX model, with onnxruntime: MLServer ships no official ONNX runtime.

    model-settings.json: {"name": "dense", "implementation": "bench.mlserver_runtime.OnnxRuntime",
                          "parameters": {"uri": "/abs/path/model.onnx"}}

Runs under a separate environment that has ``mlserver`` and ``onnxruntime`` installed (neither is a wasmgate
dependency), with the repository root on ``PYTHONPATH``; see ``bench/pod_cold_start.py --mlserver-python``.
Same session options as the other benchmark servers: one intra-op thread. Every output of the model is
returned, encoded with MLServer's numpy codec.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        path = await get_model_uri(self.settings)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        # By name when the request uses the model's input names, else by position.
        if set(self.input_names) <= given.keys():
            feeds = {name: given[name] for name in self.input_names}
        else:
            feeds = dict(zip(self.input_names, given.values(), strict=False))
        values = self.session.run(None, feeds)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self.output_names, values, strict=True)],
        )
