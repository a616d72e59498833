"""Pinned means pinned, end to end on a real ``wasm serve`` with no pod tier and a small sandbox fit: a push
pinned to a tier the function cannot be served on is refused with the figure and the setting, a request to a
Wasm-pinned function priced past the fit by its own shapes is refused (413) rather than served elsewhere, and
``wasm ls`` and the admin API show what a model costs per unit of its dynamic dimensions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest

from gateway.openapi import DOCUMENT
from tests.support import Gateway, cnn_model, encoder_inputs, encoder_model, onnx_answers

pytestmark = pytest.mark.e2e

#: The encoder costs 560 + 610 * tokens FLOPs a row (tests/test_figures.py): 1170 at its smallest shape, 5440
#: at 7 tokens, past this fit at 33 tokens and more. The CNN costs 4.67M a row at its one shape.
FIT = 20_000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # One gateway for the module (each test pushes functions of its own names): a start costs seconds.
    root = tmp_path_factory.mktemp("pinned")
    env = {"WASMGATE_POD_SCALER": "none", "WASMGATE_WASM_FIT_FLOPS_PER_ROW": str(FIT)}
    gw = Gateway(root / "data", root / "gateway.log", env=env)
    gw.start()
    yield gw
    gw.stop()


def infer(gw: Gateway, name: str, inputs: dict[str, np.ndarray]) -> httpx.Response:
    doc = [
        {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()} for k, v in inputs.items()
    ]
    return httpx.post(f"{gw.url}/v2/models/{name}/infer", json={"inputs": doc}, timeout=60)


def admin_push(gw: Gateway, name: str, model: bytes, **routing: str) -> httpx.Response:
    """A bare model pushed through the admin API (what ``wasm push`` sends, without starting the CLI)."""
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    assert httpx.put(f"{gw.url}/admin/v1/blobs/{digest}", content=model, timeout=60).status_code in (200, 201)
    doc = {"module": None, "models": {"model": digest}, **routing}
    return httpx.put(f"{gw.url}/admin/v1/functions/{name}", json=doc, timeout=60)


def test_pinned_pushes_the_gateway_cannot_serve_are_refused_naming_the_figure_and_setting(
    gateway: Gateway, tmp_path: Path
) -> None:
    cnn, encoder = tmp_path / "cnn.onnx", tmp_path / "encoder.onnx"
    cnn.write_bytes(cnn_model())
    encoder.write_bytes(encoder_model())
    wasm = gateway.cli("push", str(cnn), "--tier", "wasm")
    assert wasm.returncode != 0
    assert "400" in wasm.stderr
    assert "4.67M FLOPs per row" in wasm.stderr
    assert "wasm_fit_flops_per_row" in wasm.stderr
    pod = gateway.cli("push", str(encoder), "--tier", "pod")
    assert pod.returncode != 0
    assert "400" in pod.stderr
    assert "setting pod_scaler" in pod.stderr
    # Nothing was stored by either; the same model pinned where it can run is taken.
    for name in ("cnn", "encoder"):
        assert httpx.get(f"{gateway.url}/admin/v1/functions/{name}", timeout=10).status_code == 404
    assert admin_push(gateway, "cnn", encoder.read_bytes(), tier="wasm").status_code == 201
    # A re-push keeps its pinned tier, and is held to it: the CNN does not fit where "cnn" is pinned.
    again = admin_push(gateway, "cnn", cnn.read_bytes())
    assert again.status_code == 400
    assert "wasm_fit_flops_per_row" in again.json()["error"]
    # Unpinned, the CNN is placed by its figures (here: the sandbox is all there is, so it runs there).
    assert admin_push(gateway, "cnn", cnn.read_bytes(), tier="auto").status_code == 201


def test_a_request_is_priced_by_its_shapes_and_past_the_fit_a_wasm_pinned_one_is_refused(gateway: Gateway) -> None:
    model = encoder_model()
    assert admin_push(gateway, "pinned", model, tier="wasm").status_code == 201
    short = encoder_inputs(batch=3, sequence=7)
    served = infer(gateway, "pinned", short)
    assert served.status_code == 200, served.text
    assert served.headers["x-wasmgate-tier"] == "wasm"
    (hidden,) = [o for o in served.json()["outputs"] if o["name"] == "pooler_output"]
    expected = onnx_answers(model, short)["pooler_output"]
    np.testing.assert_allclose(np.array(hidden["data"]).reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    # 40 tokens: 560 + 610 * 40 = 25k FLOPs a row, past the fit. Not a 503 to retry: a 413 that says why.
    refused = infer(gateway, "pinned", encoder_inputs(batch=1, sequence=40))
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert "pinned to the wasm tier" in error
    assert "25k FLOPs per row" in error
    assert "560 + 610*sequence" in error
    assert "wasm_fit_flops_per_row" in error


def test_ls_and_the_admin_api_show_the_cost_per_unit_of_each_dynamic_dimension(gateway: Gateway) -> None:
    assert admin_push(gateway, "listed", encoder_model()).status_code == 201
    doc = httpx.get(f"{gateway.url}/admin/v1/functions/listed", timeout=10).json()
    figures = doc["figures"]
    assert figures["flops_per_row"] == 1170  # every dimension at 1, as manifests have always carried it
    assert figures["dims"] == [
        {"name": "sequence", "at": [{"input": n, "axis": 1} for n in ("input_ids", "attention_mask", "token_type_ids")]}
    ]
    assert figures["terms"] == [{"flops": 560.0, "per": []}, {"flops": 610.0, "per": ["sequence"]}]
    assert doc["cost"] == {"flops_per_row": "560 + 610*sequence", "reference_size": 64, "at_reference": 39_600}
    manifest = DOCUMENT["components"]["schemas"]["Manifest"]
    jsonschema.Draft202012Validator({**manifest, "components": DOCUMENT["components"]}).validate(doc)
    header, *rows = gateway.cli("ls").stdout.splitlines()
    (row,) = [r for r in rows if r.startswith("listed ")]
    assert "FLOPS/ROW" in header
    assert "560 + 610*sequence" in row
