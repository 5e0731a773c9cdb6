"""What a job's ``dataset`` names: a preset, a user file, or a dataset in the local HF cache.

Torch-free, so the API can tell an ``hf:NAME[:CONFIG]`` spec (a cache entry,
never a path: nothing to confine to the dataset roots) from a file path, and
the job schema can refuse a malformed spec before any worker starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HF_PREFIX = "hf:"
# User data files, read by the worker's one table reader (dora_core.worker.data.read_table).
USER_FILE_SUFFIXES = (".csv", ".jsonl", ".parquet")

# A hub dataset id ("imdb", "stanfordnlp/imdb"): letters, digits, "_", "-", "."; no "..",
# so a spec can never climb out of the cache directory.
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")
_CONFIG = re.compile(r"[\w.+-]+")


@dataclass(frozen=True)
class HfSpec:
    """``hf:NAME[:CONFIG]``: a dataset (and its config) in the local datasets cache."""

    name: str
    config: str | None = None

    def __str__(self) -> str:
        return HF_PREFIX + self.name + (f":{self.config}" if self.config else "")

    @property
    def label(self) -> str:
        """A short name for run names: the dataset without its namespace."""
        return self.name.rsplit("/", 1)[-1] + (f"-{self.config}" if self.config else "")


def is_hf_spec(value: str) -> bool:
    return value.startswith(HF_PREFIX)


def parse_hf_spec(value: str) -> HfSpec | None:
    """The spec in ``value``; None when it is not an ``hf:`` spec. Raises ValueError (with
    the expected form) when it starts with ``hf:`` but is malformed."""
    if not is_hf_spec(value):
        return None
    name, _, config = value[len(HF_PREFIX) :].partition(":")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{value!r} is not hf:NAME or hf:NAME:CONFIG with a dataset id such as "
            "hf:imdb or hf:stanfordnlp/imdb:plain_text"
        )
    if config and not _CONFIG.fullmatch(config):
        raise ValueError(f"{value!r}: config {config!r} may hold letters, digits and _ . + - only")
    return HfSpec(name, config or None)


def dataset_label(dataset: str) -> str:
    """The dataset part of a default run name: a preset, a file's stem, an hf dataset's name."""
    try:
        spec = parse_hf_spec(dataset)
    except ValueError:
        spec = None
    if spec is not None:
        return spec.label
    return Path(dataset).stem
