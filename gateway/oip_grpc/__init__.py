"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), served by ``wasm serve`` beside
HTTP on ``grpc_port``, in the same process and event loop, through the same request core (``gateway.dispatch``).

- ``grpc_predict_v2.proto``: the service and messages served, and the command that makes the descriptor set
  ``grpc_predict_v2.binpb`` from it;
- :mod:`gateway.oip_grpc.messages`: the message classes, built from that descriptor set in a pool of their own;
- :mod:`gateway.oip_grpc.tensors`: a ModelInferRequest as an OIP v2 body, and an OIP v2 answer as a
  ModelInferResponse;
- :mod:`gateway.oip_grpc.status`: the one table of gRPC status codes for the error tree;
- :mod:`gateway.oip_grpc.service`: the calls, and the server's start and stop.
"""
