"""The text_embed example (guest_modules/text_embed/) built to .wasm and run under the real host, against a Python
reference (tests.support.reference_text_embeddings): tokenizers' BertWordPieceTokenizer, then onnxruntime on the
same encoder, then attention-mask mean pooling and L2 normalisation, as sentence-transformers computes
all-MiniLM-L6-v2's embeddings. The encoder is a tiny BERT-shaped ONNX graph made here, so nothing is downloaded.

The function reads its vocab at /files/vocab. The host tests give it a files directory as the gateway does for a
function pushed with ``--file vocab=...``: through ``Host.prepare(..., files=DIR)``, whose instances see DIR
read-only at /files. The rest is the host as it ships too: its linker, its WASI and WASI-NN, onnxruntime. The
errors a caller sees go through the gateway app in process; tests/test_text_embed_e2e.py pushes the function
with its vocab to a real ``wasm serve`` and calls it with real clients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import TEXT_EMBED_TOLERANCE, AppClient, bert_vocab_size, push, reference_text_embeddings
from wasm_host.engine import SandboxLimits
from wasm_host.errors import GuestFailure, InvalidRequest
from wasm_host.guest import FunctionImage
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef
from wasm_host.tensors import Tensor, TensorSpec, join_bytes

HIDDEN = 16

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Tokenizing the café in Zürich! ¿Dónde está? «Très bien»…",
    "中文字符和汉字测试。한국어 문장입니다. 😀 🎉",
    "tokenizing " * 200,  # past 256 tokens: cut to [CLS] + 254 pieces + [SEP]
    "a",
    "Unknown zyxwvut\tand\nnewlines, [MASK] and a " + "x" * 120,
]


def tiny_encoder(vocab_size: int, token_types: bool = True, seed: int = 0, type_dtype: int = 7) -> bytes:
    """A BERT-shaped ONNX encoder: INT64 ``input_ids``, ``attention_mask`` (and ``token_type_ids``, of ONNX type
    ``type_dtype``: 7 is INT64), each [batch, seq], to FP32 ``last_hidden_state`` [batch, seq, HIDDEN]. Each
    token's vector is tanh((embedding + type embedding + masked mean of the sentence's embeddings) @ W), so it
    depends on the ids, on the token types, and on the attention mask as attention does: a wrong mask changes
    the answer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "words": rng.standard_normal((vocab_size, HIDDEN)).astype(np.float32),
        "types": rng.standard_normal((2, HIDDEN)).astype(np.float32),
        "w": (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32),
        "axis1": np.array([1], dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
    }
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if token_types else [])]
    types = {"token_type_ids": type_dtype}
    inputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.INT64), ["batch", "seq"]) for n in names]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])
    node = helper.make_node
    nodes = [node("Gather", ["words", "input_ids"], ["emb"])]
    if token_types:
        nodes += [
            node("Cast", ["token_type_ids"], ["type_ids"], to=TensorProto.INT64),
            node("Gather", ["types", "type_ids"], ["typ"]),
            node("Add", ["emb", "typ"], ["x"]),
        ]
    else:
        nodes += [node("Identity", ["emb"], ["x"])]
    nodes += [
        node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["m", "axis2"], ["m3"]),
        node("Mul", ["x", "m3"], ["xm"]),
        node("ReduceSum", ["xm", "axis1"], ["total"], keepdims=1),
        node("ReduceSum", ["m3", "axis1"], ["count"], keepdims=1),
        node("Div", ["total", "count"], ["context"]),
        node("Add", ["x", "context"], ["y"]),
        node("MatMul", ["y", "w"], ["z"]),
        node("Tanh", ["z"], ["last_hidden_state"]),
    ]
    init = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "tiny_bert", inputs, [output], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def text_tensor(sentences: list[str]) -> Tensor:
    data = [s.encode() for s in sentences]
    return Tensor("text", "BYTES", (len(data),), join_bytes(data))


OUTPUTS = [TensorSpec("embedding", "FP32", (-1, -1))]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The function's files directory, which its instances see read-only at /files."""
    d = tmp_path / "files"
    d.mkdir()
    return d


@pytest.fixture
def text_host(tmp_path: Path) -> Iterator[Host]:
    """A host with a deadline that a first request (the vocab read, the encoder loaded) never reaches."""
    host = Host(SandboxLimits(deadline_ms=10_000), tmp_path / "cache").start()
    yield host
    host.close()


def prepare(host: Host, wasm: Path, model: bytes, tmp_path: Path, files: Path) -> FunctionImage:
    """The function with ``model`` as its encoder and ``files`` as its files directory, as the gateway prepares a
    function pushed with ``--model encoder=... --file ...``."""
    path = tmp_path / "encoder.onnx"
    path.write_bytes(model)
    refs = {"encoder": ModelRef(hashlib.sha256(model).hexdigest(), path)}
    raw = wasm.read_bytes()
    return host.prepare(raw, hashlib.sha256(raw).hexdigest(), refs, files=files)


@pytest.mark.parametrize("token_types", [True, False], ids=["three-inputs", "two-inputs"])
def test_embeddings_equal_tokenizers_then_onnxruntime_then_mean_pooling(
    text_host: Host,
    files: Path,
    bert_vocab: Path,
    guests: dict[str, Path],
    tmp_path: Path,
    token_types: bool,
) -> None:
    (files / "vocab").write_bytes(bert_vocab.read_bytes())
    model = tiny_encoder(bert_vocab_size(bert_vocab), token_types)
    inst = prepare(text_host, guests["text_embed"], model, tmp_path, files).instantiate()
    signature = inst.signature()
    assert signature is not None
    assert [(s.name, s.datatype, s.shape) for s in signature[0]] == [("text", "BYTES", (-1,))]
    assert [(s.name, s.datatype, s.shape) for s in signature[1]] == [("embedding", "FP32", (-1, -1))]

    want = reference_text_embeddings(bert_vocab, model, SENTENCES)
    for batch in (SENTENCES, SENTENCES[:1], SENTENCES[1:2], SENTENCES[::-1]):  # one instance, reused
        (got,) = inst.handle([text_tensor(batch)], OUTPUTS)
        assert (got.name, got.datatype, got.shape) == ("embedding", "FP32", (len(batch), HIDDEN))
        expected = want if batch is SENTENCES else reference_text_embeddings(bert_vocab, model, batch)
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=0, atol=TEXT_EMBED_TOLERANCE)
    assert inst.healthy
    np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, atol=1e-6)
    # The sentence cut at 256 tokens is not the one before it, nor any other.
    assert np.abs(want[:, None, :] - want[None, :, :]).sum(axis=2)[np.triu_indices(len(SENTENCES), 1)].min() > 1e-3


def test_the_vocab_is_read_once_per_instance_and_its_absence_is_a_failure_naming_the_fix(
    text_host: Host, files: Path, bert_vocab: Path, guests: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_encoder(bert_vocab_size(bert_vocab))
    image = prepare(text_host, guests["text_embed"], model, tmp_path, files)
    (files / "vocab").write_bytes(bert_vocab.read_bytes())
    first = image.instantiate()
    (before,) = first.handle([text_tensor(["read once"])], OUTPUTS)
    (files / "vocab").unlink()
    (after,) = first.handle([text_tensor(["read once"])], OUTPUTS)
    assert after.data == before.data  # the same instance still has it

    fresh = image.instantiate()
    with pytest.raises(GuestFailure) as failed:
        fresh.handle([text_tensor(["no vocab"])], OUTPUTS)
    assert "cannot load the vocab /files/vocab: cannot open it: No such file or directory" in str(failed.value)
    assert "push the function with --file vocab=vocab.txt" in str(failed.value)
    assert not fresh.healthy

    (files / "vocab").write_bytes(b"[CLS]\n[SEP]\nhello\n")
    with pytest.raises(GuestFailure, match=r"cannot load the vocab /files/vocab: no \[UNK\] token; push the"):
        image.instantiate().handle([text_tensor(["bad vocab"])], OUTPUTS)
    (files / "vocab").write_bytes(b"[UNK]\n[CLS]\n[SEP]\nfine\nbad \xff\n")
    with pytest.raises(GuestFailure, match="cannot load the vocab /files/vocab: line 5 is not valid UTF-8"):
        image.instantiate().handle([text_tensor(["bad vocab"])], OUTPUTS)


def test_an_encoder_whose_third_input_is_not_int64_token_type_ids_fails_saying_so(
    text_host: Host, files: Path, bert_vocab: Path, guests: dict[str, Path], tmp_path: Path
) -> None:
    from onnx import TensorProto

    (files / "vocab").write_bytes(bert_vocab.read_bytes())
    model = tiny_encoder(bert_vocab_size(bert_vocab), type_dtype=TensorProto.INT32)
    inst = prepare(text_host, guests["text_embed"], model, tmp_path, files).instantiate()
    with pytest.raises(GuestFailure) as failed:
        inst.handle([text_tensor(["hello"])], OUTPUTS)
    assert "wasi-nn compute failed: unsupported_operation (6): the encoder has an input beyond" in str(failed.value)
    assert "compute before set_input of ['token_type_ids']" in str(failed.value)  # the host's cause


def test_too_many_rows_are_refused_before_anything_is_loaded(
    text_host: Host, files: Path, guests: dict[str, Path], tmp_path: Path
) -> None:
    inst = prepare(text_host, guests["text_embed"], tiny_encoder(8), tmp_path, files).instantiate()
    with pytest.raises(InvalidRequest, match=r'input "text" has more than 65536 rows'):
        inst.handle([text_tensor([""] * 65537)], OUTPUTS)
    assert inst.healthy  # the caller's mistake: the instance is kept


# -- through the gateway: the statuses and messages a caller gets ------------------------------------------------


@pytest.fixture
def client(tmp_path: Path, bert_vocab: Path, guests: dict[str, Path]) -> Iterator[AppClient]:
    """The gateway app in process with ``emb`` pushed as the README says but without its vocab (no
    ``--file vocab=...``), the mistake the first test below makes on purpose: its instances have no /files."""
    settings = Settings.from_env({}, data_dir=tmp_path / "data", deadline_ms=10_000)
    with AppClient(create_app(settings)) as c:
        model = tiny_encoder(bert_vocab_size(bert_vocab))
        push(c, "emb", guests["text_embed"].read_bytes(), {"encoder": model})
        yield c


def test_a_function_pushed_without_its_vocab_answers_500_saying_how_to_push_it(client: AppClient) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    r = client.post("/v2/models/emb/infer", json=body)
    assert r.status_code == 500
    error = r.json()["error"]
    assert "cannot load the vocab /files/vocab: cannot open it:" in error
    assert "push the function with --file vocab=vocab.txt" in error


def test_a_row_that_is_not_utf8_is_a_400_naming_the_row(client: AppClient) -> None:
    rows = join_bytes([b"fine", "also fine ✓".encode(), b"bad \xc3\x28 byte"])
    header = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(rows)}}]}
    ).encode()
    headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
    r = client.post("/v2/models/emb/infer", content=header + rows, headers=headers)
    assert r.status_code == 400
    assert 'input "text": row 2 is not valid UTF-8 (at byte 4)' in r.json()["error"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "sentences", "datatype": "BYTES", "shape": [1], "data": ["hello"]}, "missing ['text']"),
        ({"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}, "takes BYTES, got INT64"),
        ({"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["hello"]}, "takes shape [-1]"),
    ],
)
def test_the_signature_refuses_other_names_datatypes_and_ranks(
    client: AppClient, tensor: dict[str, Any], message: str
) -> None:
    meta = client.get("/v2/models/emb").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}]
    r = client.post("/v2/models/emb/infer", json={"inputs": [tensor]})
    assert r.status_code == 400
    assert message in r.json()["error"]
