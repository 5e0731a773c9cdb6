"""User tables: one reader for every place rows come from.

A job's rows come from a .csv, .jsonl or .parquet file, from a dataset in the
local Hugging Face ``datasets`` cache (``hf:NAME[:CONFIG]``, read offline), or,
through the Python API, from ``datasets.Dataset`` objects. Every task reads
them through ``read_table`` (``data.read_user_rows`` is its rows), so a
format added here works for classification and the generative tasks alike.
``datasets`` and ``pyarrow`` are imported only when a table needs them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dora_core.contracts.datasource import HfSpec, parse_hf_spec
from dora_core.contracts.job import JobConfigError

INSTALL_HINT = "pip install 'dora-toolkit[train]'"


@dataclass(frozen=True)
class Table:
    """Rows as dicts, what to call the table in messages, and its class-label columns."""

    rows: list[dict[str, Any]]
    name: str
    # datasets ClassLabel columns: the value i in such a column means class_names[column][i].
    class_names: dict[str, list[str]] = field(default_factory=dict)


def _error(msg: str, where: str = "dataset") -> JobConfigError:
    return JobConfigError([(where, msg)])


def read_text(path: Path) -> str:
    """UTF-8; a line that is not valid UTF-8 is read as cp1252 (the tweets corpus mixes both)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "\n".join(_decode_line(line) for line in raw.split(b"\n"))


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


def read_table(source: str | Path | HfSpec | Any, where: str = "dataset") -> Table:
    """The rows of ``source``: a file path, an ``hf:`` spec, or a ``datasets.Dataset``.
    ``where`` names the job field (or argument) an error message points at."""
    if isinstance(source, str):
        source = parse_hf_spec(source) or Path(source)
    if isinstance(source, HfSpec):
        return _hf_table(source, where)
    if isinstance(source, Path):
        suffix = source.suffix.lower()
        if suffix == ".parquet":
            return _parquet_table(source, where)
        if suffix == ".jsonl":
            return Table(_jsonl_rows(source, where), source.name)
        return Table(list(csv.DictReader(read_text(source).splitlines(keepends=True))), source.name)
    return dataset_table(source, where, where)


def _jsonl_rows(path: Path, where: str) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _error(
                f"{path} line {number} is not valid JSON ({exc.msg}); fix that line", where
            ) from None
        if not isinstance(row, dict):
            raise _error(
                f"{path} line {number} is not a JSON object; write one object per line", where
            )
        rows.append(row)
    return rows


def _parquet_table(path: Path, where: str) -> Table:
    """A Parquet file through pyarrow; ClassLabel names survive when ``datasets`` wrote it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _error(f"reading {path.name} needs pyarrow; {INSTALL_HINT}", where) from None
    try:
        arrow = pq.read_table(path)
    except FileNotFoundError:
        raise _error(f"file {str(path)!r} does not exist; fix the path", where) from None
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _error(f"{path} is not a readable Parquet file ({first})", where) from None
    return Table(arrow.to_pylist(), path.name, _parquet_class_names(arrow.schema.metadata))


def _parquet_class_names(metadata: dict[bytes, bytes] | None) -> dict[str, list[str]]:
    """ClassLabel columns from the features ``datasets`` stores in a Parquet schema."""
    try:
        features = json.loads((metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        return {}
    return {
        column: list(spec["names"])
        for column, spec in features.items()
        if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and "names" in spec
    }


def dataset_table(data: Any, name: str, where: str = "dataset") -> Table:
    """A ``datasets.Dataset`` (one split) as a table called ``name``."""
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is None or not isinstance(data, datasets.Dataset):
        hint = (
            "; pass one split, e.g. data['train']"
            if datasets is not None and isinstance(data, datasets.DatasetDict)
            else ""
        )
        raise _error(
            f"is a {type(data).__name__}; give a datasets.Dataset (or a file / hf: name as "
            f"the job's dataset){hint}",
            where,
        )
    class_names = {
        column: list(feature.names)
        for column, feature in data.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    return Table(data.to_list(), name, class_names)


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """datasets in offline mode for one call (its flag is read at import; this process may
    have imported it online), restored afterwards for a caller's own use."""
    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No "using the cached version since the hub is unreachable" warning: offline is the
    point here, not a fallback."""
    before = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(before)


def _hf_table(spec: HfSpec, where: str) -> Table:
    """The train split (or the only split) of a dataset in the local datasets cache, offline.

    ``hf://datasets/NAME`` makes ``load_dataset`` look on the hub only (never
    at a local folder that happens to share the name); offline, the hub
    lookup fails at once and the library falls back to its cache, which is
    where a dataset downloaded earlier lives.
    """
    try:
        import datasets
    except ImportError:
        raise _error(f"{spec} needs the datasets package; {INSTALL_HINT}", where) from None
    cache_dir = os.environ.get("HF_DATASETS_CACHE") or datasets.config.HF_DATASETS_CACHE
    with _offline(datasets), _quiet(datasets):
        try:
            loaded = datasets.load_dataset(
                f"hf://datasets/{spec.name}", spec.config, cache_dir=str(cache_dir)
            )
        except ConnectionError:
            load = f"datasets.load_dataset({spec.name!r}" + (
                f", {spec.config!r})" if spec.config else ")"
            )
            raise _error(
                f"{spec} is not in the local datasets cache ({cache_dir}); download it once "
                f"where the hub is reachable ({load}) or set HF_DATASETS_CACHE to its cache",
                where,
            ) from None
        except Exception as exc:  # the library's own errors: a missing config, a broken cache
            message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise _error(
                f"{spec} could not be read from the local datasets cache ({cache_dir}): "
                f"{message or type(exc).__name__}",
                where,
            ) from None
    if "train" in loaded:
        split = loaded["train"]
    elif len(loaded) == 1:
        split = next(iter(loaded.values()))
    else:
        raise _error(
            f"{spec} has the splits {', '.join(loaded)} and none is called train; "
            "load the one you want in Python and pass it to train(train_data=...)",
            where,
        )
    return dataset_table(split, str(spec), where)
