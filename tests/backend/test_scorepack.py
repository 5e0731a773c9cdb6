"""Packed score rows against a byte-level reading written independently with struct."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from backend.scorepack import Layout, PackError, live_counts, pack_step, unpack_masks, unpack_scores

LAYOUT = Layout(("a", "b", "c"), (2, 3, 4))


def _record() -> tuple[dict, dict]:
    values = {"a": [0.5, -1.25], "b": [3.0, 0.0, 1e-3], "c": [7.0, 8.0, 9.0, 10.0]}
    masks = {"a": [1, 0], "b": [1, 1, 0], "c": [0, 1, 1, 1]}
    return values, masks


def test_blob_bytes_match_struct_little_endian_float32_and_msb_first_bits() -> None:
    values, masks = _record()
    scores_blob, mask_blob = pack_step(LAYOUT, values, masks)
    flat = [*values["a"], *values["b"], *values["c"]]
    assert scores_blob == struct.pack("<9f", *flat)
    bits = "".join(str(b) for b in [*masks["a"], *masks["b"], *masks["c"]]).ljust(16, "0")
    assert mask_blob == bytes([int(bits[:8], 2), int(bits[8:], 2)])
    assert len(scores_blob) + len(mask_blob) == 9 * 4 + 2


def test_round_trip_and_live_counts() -> None:
    values, masks = _record()
    scores_blob, mask_blob = pack_step(LAYOUT, values, masks)
    scores = unpack_scores(LAYOUT, scores_blob)
    assert scores[LAYOUT.span(1)].tolist() == pytest.approx(values["b"], rel=1e-6)
    assert unpack_masks(LAYOUT, mask_blob)[LAYOUT.span(2)].tolist() == masks["c"]
    assert live_counts(LAYOUT, mask_blob).tolist() == [1, 2, 3]


def test_key_order_of_the_record_does_not_matter() -> None:
    values, masks = _record()
    reordered = {k: values[k] for k in ("c", "a", "b")}
    assert pack_step(LAYOUT, reordered, masks) == pack_step(LAYOUT, values, masks)


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        (lambda v, m: v.update(z=[1.0, 2.0]), ("values", "z"), "unknown module 'z'"),
        (lambda v, m: v.pop("b"), ("values",), "missing, e.g. 'b'"),
        (
            lambda v, m: v.update(b=[1.0]),
            ("values", "b"),
            "has 1 values; the module registered r' = 3",
        ),
        (lambda v, m: m.update(c=[1, 1, 1]), ("masks", "c"), "has 3 values"),
        (lambda v, m: v.update(c=[1.0, float("nan"), 0, 0]), ("values", "c"), "non-finite"),
        (lambda v, m: v.update(a=[float("inf"), 0]), ("values", "a"), "non-finite"),
        (lambda v, m: v.update(a=[1e39, 0]), ("values", "a"), "beyond float32"),
        (lambda v, m: m.update(b=[1, 2, 0]), ("masks", "b"), "0 or 1"),
    ],
)
def test_records_that_do_not_fit_name_the_module(change, loc, message) -> None:
    values, masks = _record()
    change(values, masks)
    with pytest.raises(PackError, match=message) as err:
        pack_step(LAYOUT, values, masks)
    assert err.value.loc == loc


def test_roberta_base_step_is_3456_plus_108_bytes() -> None:
    layout = Layout(tuple(f"m{i}" for i in range(72)), (12,) * 72)
    values = {n: list(np.linspace(0, 1, 12)) for n in layout.names}
    masks = {n: [1] * 12 for n in layout.names}
    scores_blob, mask_blob = pack_step(layout, values, masks)
    assert (len(scores_blob), len(mask_blob)) == (72 * 12 * 4, 72 * 12 // 8)
