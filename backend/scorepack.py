"""Packing one step's scores and masks for all modules into two compact blobs.

Layout: modules in registration order, each taking ``rank`` consecutive
slots. Scores are little-endian float32 (4 bytes a value), masks one bit a
value (``numpy.packbits``, big bit order, zero-padded to a whole byte). A
RoBERTa-base step (72 modules x 12) is 3,456 + 108 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain

import numpy as np

SCORE_DTYPE = np.dtype("<f4")


class PackError(ValueError):
    """A scores record that does not fit the registered layout; ``loc`` points into it."""

    def __init__(self, loc: tuple[str | int, ...], msg: str):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


@dataclass(frozen=True)
class Layout:
    """Where each registered module's components sit in a packed step."""

    names: tuple[str, ...]
    ranks: tuple[int, ...]

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start slot of each module, then the total: len(names) + 1 entries."""
        return np.concatenate([[0], np.cumsum(self.ranks, dtype=np.int64)])

    @cached_property
    def name_set(self) -> frozenset[str]:
        return frozenset(self.names)

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def __contains__(self, name: object) -> bool:
        return name in self.name_set

    def span(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def module_at(self, slot: int) -> str:
        """Name of the module owning a slot."""
        return self.names[int(np.searchsorted(self.offsets, slot, side="right")) - 1]


def _check_keys(layout: Layout, got: Mapping[str, Sequence], field: str) -> None:
    """Exactly the registered modules, each with r' values."""
    if got.keys() != layout.name_set:  # the usual case, equal sets, is checked in C
        unknown = [n for n in got if n not in layout]
        if unknown:
            raise PackError(
                (field, unknown[0]),
                f"unknown module {unknown[0]!r} ({len(unknown)} unknown); register it first",
            )
        missing = [n for n in layout.names if n not in got]
        raise PackError(
            (field,),
            f"{len(missing)} registered module(s) missing, e.g. {missing[0]!r}; "
            "a scores record covers every registered module",
        )
    for name, rank in zip(layout.names, layout.ranks, strict=True):
        if len(got[name]) != rank:
            raise PackError(
                (field, name), f"has {len(got[name])} values; the module registered r' = {rank}"
            )


def pack_step(
    layout: Layout, values: Mapping[str, Sequence[float]], masks: Mapping[str, Sequence[int]]
) -> tuple[bytes, bytes]:
    """Validate one scores record against the layout and pack it; raise PackError."""
    _check_keys(layout, values, "values")
    _check_keys(layout, masks, "masks")
    total = layout.total
    wide = np.fromiter(
        chain.from_iterable(values[n] for n in layout.names), dtype=np.float64, count=total
    )
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, rejected below
        scores = wide.astype(SCORE_DTYPE)
    finite = np.isfinite(scores)
    if not finite.all():
        bad = layout.module_at(int(np.argmin(finite)))
        raise PackError(
            ("values", bad),
            "non-finite score (NaN, infinity or beyond float32); scores must be finite",
        )
    bits = np.fromiter(
        chain.from_iterable(masks[n] for n in layout.names), dtype=np.int64, count=total
    )
    wrong = (bits != 0) & (bits != 1)
    if wrong.any():
        raise PackError(
            ("masks", layout.module_at(int(np.argmax(wrong)))), "mask values must be 0 or 1"
        )
    return scores.tobytes(), np.packbits(bits.astype(np.uint8)).tobytes()


def unpack_scores(layout: Layout, blob: bytes) -> np.ndarray:
    """All slots of one step as float32, registration order."""
    return np.frombuffer(blob, dtype=SCORE_DTYPE, count=layout.total)


def unpack_masks(layout: Layout, blob: bytes) -> np.ndarray:
    """All slots of one step as uint8 0/1."""
    return np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=layout.total)


def live_counts(layout: Layout, mask_blob: bytes) -> np.ndarray:
    """Live components per module (sum of its mask bits)."""
    if not layout.names:
        return np.zeros(0, dtype=np.int64)
    # ranks are >= 1, so no span is empty (reduceat would misreport an empty one)
    return np.add.reduceat(unpack_masks(layout, mask_blob).astype(np.int64), layout.offsets[:-1])
