"""``wasm example DIR``: write the files README's tour uses into DIR, so that the tour runs as written.

- ``digits.onnx``: the demo's digits classifier (input ``input`` FP32 [-1, 64], pixels scaled to 0-1);
  ``request.json``: an OIP v2 request with one test image for it; ``top3-request.json``: the same image as
  raw 0-16 pixels (UINT8) for the ``digits_topk`` function;
- ``big.onnx``: a 9.5 MB MLP (input ``input`` FP32 [-1, 256]), large enough that the router places it on the
  pod tier where there is an accelerator; ``big-request.json``: one row for it;
- ``encoder.onnx`` and ``vocab.txt``: a tiny BERT-shaped encoder with random weights and a small uncased
  WordPiece vocab to match, a stand-in for all-MiniLM-L6-v2 (its ONNX export and vocab.txt are pushed the
  same way, and then give real embeddings);
- ``labels.txt``: a data file (the digits' names), for the ``read_file`` function;
- the example functions ``digits_topk.wasm``, ``read_file.wasm`` and ``text_embed.wasm``, copied from the
  checkout's ``guest_modules/build/`` (``python guest_modules/build.py`` makes them).

Everything is made here, deterministically, with no download; it needs the ``dev`` extra (scikit-learn and
skl2onnx train the digits model).
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

from gateway.cli.demo import GUEST_BUILD, dense_model, encoder_model, train_digits
from wasm_host.errors import ClientError

GUESTS = ("digits_topk", "read_file", "text_embed")
#: The words of the tour's sentences, whole in the vocab, so that they tokenize as words.
WORDS = ("a", "man", "is", "eating", "food", "someone", "eats", "the", "digit", "zero", "one", "two", "three")
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def vocab_lines() -> list[str]:
    """A BERT vocab: the special tokens, every lowercase letter, digit and ASCII punctuation mark alone and
    as a ``##`` continuation, and :data:`WORDS`. Every lowercase ASCII text tokenizes to known pieces."""
    chars = [*string.ascii_lowercase, *string.digits, *string.punctuation]
    words = [w for w in WORDS if w not in chars]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *words]


def _request(name: str, datatype: str, row: list[float] | list[int]) -> str:
    doc = {"inputs": [{"name": name, "shape": [1, len(row)], "datatype": datatype, "data": row}]}
    return json.dumps(doc) + "\n"


def write_examples(target: Path) -> list[Path]:
    """Write the tour's files into ``target`` (made if absent; files there are replaced). Returns them.
    ClientError when the example functions are not built, naming the command that builds them."""
    missing = [g for g in GUESTS if not (GUEST_BUILD / f"{g}.wasm").exists()]
    if missing:
        raise ClientError(
            f"the example functions are not built ({', '.join(missing)}): run `python guest_modules/build.py` "
            "in the checkout first"
        )
    target.mkdir(parents=True, exist_ok=True)
    model, x_test, _ = train_digits()
    image = [round(float(v), 4) for v in x_test[0]]
    vocab = vocab_lines()
    files = {
        "digits.onnx": model,
        "request.json": _request("input", "FP32", image).encode(),
        "top3-request.json": _request("images", "UINT8", [round(v * 16) for v in image]).encode(),
        "big.onnx": dense_model(),
        "big-request.json": _request("input", "FP32", [0.5] * 256).encode(),
        "encoder.onnx": encoder_model(vocab=len(vocab), hidden=32),
        "vocab.txt": ("\n".join(vocab) + "\n").encode(),
        "labels.txt": ("\n".join(LABELS) + "\n").encode(),
    }
    written = []
    for name, data in files.items():
        (target / name).write_bytes(data)
        written.append(target / name)
    for guest in GUESTS:
        written.append(Path(shutil.copyfile(GUEST_BUILD / f"{guest}.wasm", target / f"{guest}.wasm")))
    return written
