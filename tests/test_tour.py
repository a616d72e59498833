"""README.md's tour, run from README.md itself, so that the two cannot drift: its ``sh`` and ``python`` blocks,
in order, as one bash script in an empty directory, against the real ``wasm serve`` the tour starts.

How the script differs from the text, and why: the port (8080 in the text) is a free one, and so is the gRPC
port (``WASMGATE_GRPC_PORT``, 8081 by default), so that the test cannot collide with anything on the machine;
``curl`` is wrapped so that an HTTP error fails the script, as a person reading the answer would notice it; the
script stops at the first failing command (``set -e``). The long-running ``wasm serve ... &`` is started in the
background by the tour's own ``&``, waited for by the tour's own readiness loop, and stopped by its ``kill %1``;
whatever is left of its process group is stopped here in any case.

Also here: the README's other promises about its commands, the error table holding every status the API
answers, and one spelling of each registry flag.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from gateway.cli.main import _parser
from gateway.http_errors import ERRORS
from gateway.openapi import DOCUMENT
from gateway.settings import Settings
from gateway.wiring import has_accelerators
from tests.support import candidate_port

README = Path(__file__).resolve().parent.parent / "README.md"

#: Makes an HTTP error (>= 400) fail the command, as curl alone would not; the body is still printed.
CURL_WRAPPER = """\
curl() {
  local body code
  body=$(mktemp)
  code=$(command curl -o "$body" -w '%{http_code}' "$@") || { rc=$?; cat "$body"; rm -f "$body"; return $rc; }
  cat "$body"; echo; rm -f "$body"
  if [ "$code" -ge 400 ]; then echo "HTTP $code from: curl $*" >&2; return 1; fi
}
"""


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of ``text``: (language, code), in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


def tour_blocks() -> list[tuple[str, str]]:
    found = [(lang, code) for lang, code in blocks(section(README.read_text(), "A tour")) if lang in ("sh", "python")]
    assert found, "the tour has no sh or python blocks"
    return found


def code_of(line: str, lang: str) -> str:
    """A line without its comment (a ``#`` outside quotes, as the tour writes them: after code or alone)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == "'" and lang == "sh":
            quoted = not quoted
        if ch == "#" and not quoted and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


def script(port: int) -> str:
    parts = ["set -e", CURL_WRAPPER]
    for lang, code in tour_blocks():
        code = code.replace("localhost:8080", f"localhost:{port}").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        parts.append(code if lang == "sh" else f"python - <<'PY'\n{code}PY\n")
    return "\n".join(parts)


def test_the_tour_has_no_placeholders_and_uses_only_files_it_makes() -> None:
    for lang, code in tour_blocks():
        for line in code.splitlines():
            assert "..." not in code_of(line, lang), f"a placeholder in the tour: {line}"
    commands = "\n".join(code for lang, code in tour_blocks() if lang == "sh")
    assert commands.lstrip().startswith("wasm example tour && cd tour"), "the tour must first make its files"
    made = set(_written_names())
    used = set(re.findall(r"[\w.-]+\.(?:onnx|wasm|json|txt)\b", commands))
    assert used <= made, f"files the tour uses but does not make: {sorted(used - made)}"


def _written_names() -> list[str]:
    from gateway.cli.example import GUESTS

    names = ["digits.onnx", "request.json", "top3-request.json", "big.onnx", "big-request.json"]
    names += ["encoder.onnx", "vocab.txt", "labels.txt", *(f"{g}.wasm" for g in GUESTS)]
    return names


@pytest.mark.e2e
def test_the_tour_runs_as_written(tmp_path: Path, guests: dict[str, Path]) -> None:
    port = candidate_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMGATE_")}
    env |= {"WASMGATE_PORT": str(port), "WASMGATE_URL": f"http://127.0.0.1:{port}"}
    env["WASMGATE_GRPC_PORT"] = str(next(p for p in iter(candidate_port, None) if p != port))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # wasm and python of this venv
    proc = subprocess.Popen(
        ["bash", "-c", script(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the gateway and its runners, stopped below
    )
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    print(out)  # the tour's own output, for a reader of a failure
    assert proc.returncode == 0, out
    assert sorted(p.name for p in (tmp_path / "tour").iterdir() if p.is_file()) == sorted(_written_names()), out

    # What the tour's comments say of the answers.
    assert "pushed digits version 1 (passthrough, tier auto:wasm)" in out, out
    accelerated = has_accelerators(Settings.from_env({}), ort.get_available_providers())
    assert f"pushed big version 1 (passthrough, tier auto:{'pod' if accelerated else 'wasm'})" in out, out
    assert "pushed big-pod version 1 (passthrough, tier pod)" in out, out
    masked, held = out.split("pushed big-held", 1)
    assert "x-wasmgate-reason: cold_start_masked" in masked.split("pushed big-pod", 1)[1].lower(), out
    assert "x-wasmgate-tier: pod" in held.lower(), out
    assert '"object":"list"' in out.replace(" ", ""), out  # the embeddings
    assert "zero" in out  # the reader's labels
    assert "'state': 'READY'" in out, out  # the repository index after the Triton client's load


def test_the_error_table_lists_every_status_the_api_answers() -> None:
    table = section(README.read_text(), "HTTP API").split("### Errors", 1)[1]
    listed = {int(s) for s in re.findall(r"^\| (\d{3}) \|", table, re.M)}
    answered = {row.status for row in ERRORS} | {404, 405}  # Starlette's own: no route, a method not allowed
    documented = {
        int(status)
        for item in DOCUMENT["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
        for status in operation["responses"]
        if int(status) >= 400
    }
    assert answered <= listed, f"statuses the error table lacks: {sorted(answered - listed)}"
    assert documented <= listed, f"statuses the OpenAPI document gives that the table lacks: {documented - listed}"


def test_every_command_names_the_registry_flags_as_wasm_serve_does_and_the_old_names_still_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = _parser()
    store = "oci://127.0.0.1:5000/wasmgate"
    for command in (["ls"], ["rm", "x"], ["push", "m.onnx"]):
        args = parser.parse_args([*command, "--registry", store, "--registry-plain-http", "--registry-ca-file", "c"])
        assert (args.plain_http, args.ca_file) == (True, "c")
        assert capsys.readouterr().err == ""
        old = parser.parse_args([*command, "--registry", store, "--plain-http", "--ca-file", "c", "--username", "u"])
        assert (old.plain_http, old.ca_file, old.username) == (True, "c", "u")
        err = capsys.readouterr().err
        assert "--plain-http is deprecated; use --registry-plain-http" in err
        assert "--ca-file is deprecated; use --registry-ca-file" in err
        assert "--username is deprecated; use --registry-username" in err
    serve = parser.parse_args(["serve", "--registry-plain-http"])
    assert serve.registry_plain_http is True
    text = README.read_text()
    assert not re.search(r"(?<![\w-])--(plain-http|ca-file|username)\b", text), "an old registry flag in README.md"
