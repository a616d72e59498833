"""What a model costs as a function of its request's shapes: the figures measured at push for the zoo's
encoder (dynamic batch and sequence) and CNN (dynamic height and width), against counts made by hand from
their graphs; the router's price of a request from its shapes; and figures written before there were terms."""

from __future__ import annotations

import onnx
import pytest

from gateway.store.manifest import Manifest
from router.policy import request_flops
from tests.support import cnn_model, encoder_model
from wasm_host.figures import REFERENCE_SIZE, Dim, ModelFigures, Term, measure

# tests.support.encoder_model at hidden 16, by hand. Per token: two Gathers (16 each), Add (16), Cast (1),
# Unsqueeze (1), Mul (16), MatMul (2 * 16 * 16), Add (16), Tanh (16). Once per row: the pooler's Gather (16),
# MatMul (2 * 16 * 16), Add (16), Tanh (16).
ENCODER_PER_TOKEN = 16 * 3 + 1 + 1 + 16 + 2 * 16 * 16 + 16 * 2
ENCODER_PER_ROW = 16 + 2 * 16 * 16 + 16 * 2

# tests.support.cnn_model at 4 channels, 10 classes, an H x W image (multiples of 4), by hand, per pixel: the
# stem Conv to H/2 x W/2 (2 * 4 * 27 / 4 = 54), BatchNormalization and Relu (4 / 4 each), MaxPool to H/4 x W/4
# (4 / 16), two Conv 3x3 (2 * 4 * 36 / 16 = 18 each), Relu, Add, Relu after them (4 / 16 each). Once per row:
# GlobalAveragePool (4), Flatten (4), Gemm (2 * 10 * 4).
CNN_PER_PIXEL = 54 + 1 + 1 + 0.25 + 18 + 0.25 + 18 + 0.25 + 0.25
CNN_PER_ROW = 4 + 4 + 80


def test_an_encoder_costs_a_row_plus_a_term_per_token_of_its_shared_sequence() -> None:
    figures = measure(encoder_model())
    assert figures.flops_per_row == ENCODER_PER_ROW + ENCODER_PER_TOKEN  # every dynamic dimension at 1
    # One dimension, named once, given by each of the three inputs at axis 1; the batch is not one.
    (dim,) = figures.dims
    assert dim == Dim("sequence", (("input_ids", 1), ("attention_mask", 1), ("token_type_ids", 1)))
    assert {t.per: t.flops for t in figures.terms} == {(): ENCODER_PER_ROW, ("sequence",): ENCODER_PER_TOKEN}
    for tokens in (1, 7, 300):
        assert figures.flops_at({"sequence": tokens}) == ENCODER_PER_ROW + ENCODER_PER_TOKEN * tokens
    assert figures.reference_flops == ENCODER_PER_ROW + ENCODER_PER_TOKEN * REFERENCE_SIZE
    assert figures.formula() == "560 + 610*sequence"


def test_a_cnn_with_a_dynamic_image_costs_in_proportion_to_its_area() -> None:
    figures = measure(cnn_model(size=("height", "width")))
    assert [d.name for d in figures.dims] == ["height", "width"]
    terms = {t.per: t.flops for t in figures.terms}
    assert terms == pytest.approx({(): CNN_PER_ROW, ("height", "width"): CNN_PER_PIXEL})
    # At ImageNet's 224 x 224 the price is the fixed-size model's count, to the FLOP.
    fixed = measure(cnn_model())
    assert fixed.dims == ()
    assert fixed.terms == ()
    assert fixed.flops_per_row == CNN_PER_ROW + CNN_PER_PIXEL * 224 * 224
    assert figures.flops_at({"height": 224, "width": 224}) == fixed.flops_per_row
    assert figures.formula() == "93*height*width"  # 88 FLOPs a row are under 0.1% of it at 64 x 64: not shown


def test_unnamed_dynamic_dimensions_of_inputs_shaped_alike_are_one() -> None:
    proto = onnx.load_model_from_string(encoder_model())
    for info in proto.graph.input:
        for d in info.type.tensor_type.shape.dim:
            d.Clear()  # neither a size nor a name: a dynamic dimension an exporter left unnamed
    figures = measure(proto.SerializeToString(), proto)
    (dim,) = figures.dims
    assert dim.name == "input_ids[1]"
    assert len(dim.at) == 3
    assert figures.flops_at({dim.name: 10}) == ENCODER_PER_ROW + ENCODER_PER_TOKEN * 10


def test_a_request_is_priced_from_its_own_shapes() -> None:
    figures = measure(encoder_model())
    short = request_flops(figures, {"input_ids": (8, 4), "attention_mask": (8, 4)})
    long = request_flops(figures, {"input_ids": (8, 512)})
    assert short == ENCODER_PER_ROW + ENCODER_PER_TOKEN * 4  # per row: the batch of 8 does not count
    assert long == ENCODER_PER_ROW + ENCODER_PER_TOKEN * 512
    # The size is read at the next place the dimension is given where the first input is absent.
    assert request_flops(figures, {"token_type_ids": (1, 9)}) == ENCODER_PER_ROW + ENCODER_PER_TOKEN * 9
    # A request that gives no size (a guest that tokenizes text itself): the reference size.
    assert request_flops(figures, {"text": (8,)}) == figures.reference_flops
    # A model without dynamic dimensions costs the same whatever the request.
    dense = ModelFigures(bytes=10, params=5, flops_per_row=77)
    assert request_flops(dense, {"x": (3, 999)}) == dense.reference_flops == 77


def test_a_function_of_several_models_costs_their_sum_and_shares_dimensions_by_name() -> None:
    encoder = measure(encoder_model())
    dense = ModelFigures(bytes=10, params=5, flops_per_row=100)
    total = encoder + encoder + dense
    assert total.dims == encoder.dims
    assert total.flops_at({"sequence": 5}) == 2 * encoder.flops_at({"sequence": 5}) + 100
    assert total.flops_per_row == 2 * encoder.flops_per_row + 100
    assert dense + dense == ModelFigures(20, 10, 200)  # no dimension anywhere: no terms


def test_figures_round_trip_and_figures_written_before_terms_still_load() -> None:
    figures = measure(cnn_model(size=("height", "width")))
    assert ModelFigures.from_json(figures.to_json()) == figures
    old = ModelFigures.from_json({"bytes": 90_000_000, "params": 22_000_000, "flops_per_row": 19_800_000})
    assert (old.dims, old.terms) == ((), ())
    assert old.flops_at({"seq": 512}) == old.reference_flops == 19_800_000
    assert old.formula() == "19.8M"
    assert Term.from_json({"flops": 2.5, "per": ["h", "w"]}) == Term(2.5, ("h", "w"))
    # A whole manifest as stores wrote it before: its figures load, and price every request alike.
    doc = {"name": "old", "version": 3, "kind": "passthrough", "module": "a" * 64, "models": {"model": "b" * 64}}
    manifest = Manifest.from_json({**doc, "inputs": None, "outputs": None, "figures": {"flops_per_row": 7}})
    assert manifest.figures == ModelFigures(flops_per_row=7)
    assert Manifest.from_json(manifest.to_json()) == manifest
