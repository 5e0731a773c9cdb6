"""Text classification data: the four presets, user tables, a seeded split, batches.

User tables (.csv, .jsonl, .parquet, ``hf:NAME[:CONFIG]`` from the local
datasets cache, ``datasets.Dataset`` objects) are read by ``tables.read_table``.

(Generative data, built on the same files, split and batches, is ``gendata``.)

Everything a run needs to rebuild its data exactly: the split is a pure
function of (labels, dev_fraction, seed) and is recorded in ``split.json``;
the order of micro-batches is a pure function of (seed, epoch), so a resumed
run only needs the number of micro-batches already consumed.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from dora_core.contracts.datasource import USER_FILE_SUFFIXES, HfSpec, parse_hf_spec
from dora_core.contracts.job import JobConfig, JobConfigError
from dora_core.contracts.presets import DATASETS
from dora_core.worker.tables import Table, read_table
from dora_core.worker.tables import read_text as _read_text


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels; ``label_names[i]`` is what label i stood for."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return TextDataset(
            [self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names
        )


class Splittable(Protocol):
    """What the split needs of a dataset: its size, labels to stratify on, and subsets."""

    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int: ...

    def subset(self, indices: Sequence[int]) -> Any: ...


def _encode_labels(raw: Sequence[Any]) -> tuple[list[int], list[str]]:
    """Map raw labels to 0..K-1: integer labels keep their numeric order, others sort as text."""
    values = sorted({str(v) for v in raw})
    if all(_is_int(v) for v in values):
        values.sort(key=int)
    index = {v: i for i, v in enumerate(values)}
    return [index[str(v)] for v in raw], values


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _rt_snippets(path: Path) -> TextDataset:
    """hutto_ICWSM_2014: tab-separated id, mean human rating in [-4, 4], text; positive = rating > 0."""
    texts, labels = [], []
    for line in _read_text(path).splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        texts.append(parts[2].strip())
        labels.append(int(float(parts[1]) > 0))
    return TextDataset(texts, labels, ["negative", "positive"])


def _sms_spam(path: Path) -> TextDataset:
    rows = list(csv.DictReader(_read_text(path).splitlines(keepends=True)))
    return TextDataset([r["text"] for r in rows], [int(r["spam"]) for r in rows], ["ham", "spam"])


def _bbc_news(folder: Path) -> TextDataset:
    """One folder per topic, one article per .txt file (title on the first line)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(names):
        for file in sorted((folder / name).glob("*.txt")):
            texts.append(" ".join(_read_text(file).split()))
            labels.append(label)
    return TextDataset(texts, labels, names)


def _tweets(path: Path) -> TextDataset:
    rows = list(csv.DictReader(_read_text(path).splitlines(keepends=True)))
    names = ["negative", "neutral", "positive"]
    index = {n: i for i, n in enumerate(names)}
    rows = [r for r in rows if r.get("sentiment") in index and r.get("text")]
    return TextDataset([r["text"] for r in rows], [index[r["sentiment"]] for r in rows], names)


_PRESET_READERS = {
    "rt-snippets": _rt_snippets,
    "sms-spam": _sms_spam,
    "bbc-news": _bbc_news,
    "tweets": _tweets,
}


def read_user_rows(source: str | Path | HfSpec | Any) -> list[dict[str, Any]]:
    """Rows of a user table as dicts: a .csv/.jsonl/.parquet file, an ``hf:NAME[:CONFIG]``
    spec (local datasets cache, offline) or a ``datasets.Dataset``; see ``tables.read_table``."""
    return read_table(source).rows


def user_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Column names in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows[:1000]:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _labelled_rows(table: Table, text_column: str, label_column: str) -> tuple[list[str], list]:
    """Texts and raw labels of the rows that have both (a ClassLabel's -1, no label, is left out)."""
    columns = user_columns(table.rows)
    for field, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in columns:
            raise JobConfigError(
                [
                    (
                        field,
                        f"column {column!r} is not in {table.name} (columns: {', '.join(columns) or 'none'}); set {field} to one of them",
                    )
                ]
            )
    rows = [
        r
        for r in table.rows
        if r.get(text_column) not in (None, "") and r.get(label_column) not in (None, "")
    ]
    if label_column in table.class_names:
        count = len(table.class_names[label_column])
        rows = [r for r in rows if 0 <= int(r[label_column]) < count]
    return [str(r[text_column]) for r in rows], [r[label_column] for r in rows]


def labelled(tables: Sequence[Table], text_column: str, label_column: str) -> list[TextDataset]:
    """Each table as texts + labels under one label encoding (a dev table shares train's ids).

    A ``datasets`` ClassLabel column keeps its own ids and names; other labels
    go through ``_encode_labels`` over all tables together.
    """
    parts = [_labelled_rows(t, text_column, label_column) for t in tables]
    feature_names = next(
        (t.class_names[label_column] for t in tables if label_column in t.class_names), None
    )
    if feature_names is not None:
        return [TextDataset(texts, [int(y) for y in raw], feature_names) for texts, raw in parts]
    ids, names = _encode_labels([y for _, raw in parts for y in raw])
    out, start = [], 0
    for texts, _ in parts:
        out.append(TextDataset(texts, ids[start : start + len(texts)], names))
        start += len(texts)
    return out


def _check_classes(data: TextDataset, job: JobConfig, name: str) -> TextDataset:
    classes = len(set(data.labels))
    if classes < 2:
        raise JobConfigError(
            [
                (
                    "label_column",
                    f"column {job.label_column!r} of {name} has {classes} distinct value(s); classification needs at least 2",
                )
            ]
        )
    return data


USER_SUFFIXES = USER_FILE_SUFFIXES


def user_file(job: JobConfig, presets: Sequence[str]) -> Path:
    """The job's dataset as an existing user file, or the error that names the fix
    (``presets``: the preset names this task could use instead)."""
    path = Path(job.dataset).expanduser()
    if path.suffix.lower() not in USER_SUFFIXES:
        raise JobConfigError(
            [
                (
                    "dataset",
                    f"{job.dataset!r} is neither a preset ({', '.join(presets)}) nor a "
                    f"{'/'.join(USER_SUFFIXES)} file; use one of those",
                )
            ]
        )
    if not path.is_file():
        raise JobConfigError(
            [
                (
                    "dataset",
                    f"file {str(path)!r} does not exist; fix the path or use a preset ({', '.join(presets)})",
                )
            ]
        )
    return path


def user_source(job: JobConfig, presets: Sequence[str]) -> Path | HfSpec:
    """The job's own table: an ``hf:`` dataset spec, else an existing user file (``user_file``).
    ``read_user_rows`` takes either."""
    return parse_hf_spec(job.dataset) or user_file(job, presets)


def preset_path(name: str) -> Path:
    """The installed location of a dataset preset, or the error with the install hint."""
    preset = DATASETS[name]
    path = preset.path()
    if path is None:
        raise JobConfigError(
            [("dataset", f"preset {name!r} is not installed; {preset.install_hint}")]
        )
    return path


def presets_for(task: str) -> list[str]:
    return [name for name, p in DATASETS.items() if task in p.tasks]


def load_dataset(job: JobConfig) -> TextDataset:
    """The whole labelled dataset named by the job (before splitting)."""
    if job.dataset in _PRESET_READERS:
        return _PRESET_READERS[job.dataset](preset_path(job.dataset))
    if job.dataset in DATASETS:
        raise JobConfigError(
            [
                (
                    "dataset",
                    f"{job.dataset!r} serves {', '.join(DATASETS[job.dataset].tasks)}, not "
                    f"classification; set task or use {', '.join(presets_for('classification'))}",
                )
            ]
        )
    table = read_table(user_source(job, presets_for("classification")))
    (data,) = labelled([table], job.text_column, job.label_column)
    return _check_classes(data, job, table.name)


# --- the split -----------------------------------------------------------------------------


def split_indices(
    labels: Sequence[int], dev_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded stratified split: each class gives round(fraction * its size) examples (>= 1) to dev.

    Returns (train, dev) index lists; train is in a seeded random order (so a
    ``max_train_samples`` cap takes a random subset), dev is sorted.
    """
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train, dev = [], []
    for y in sorted(by_class):
        members = by_class[y]
        order = torch.randperm(len(members), generator=gen).tolist()
        n_dev = (
            min(len(members) - 1, max(1, round(dev_fraction * len(members))))
            if len(members) > 1
            else 0
        )
        dev.extend(members[j] for j in order[:n_dev])
        train.extend(members[j] for j in order[n_dev:])
    shuffle = torch.randperm(len(train), generator=gen).tolist()
    return [train[j] for j in shuffle], sorted(dev)


@dataclass(frozen=True)
class Split:
    train: Any  # TextDataset or gendata.GenDataset (the same type as dev)
    dev: Any
    record: dict  # what goes to split.json


def make_split(data: Splittable, job: JobConfig) -> Split:
    """Apply the seeded split and the sample caps; the record lists every dev index."""
    train_idx, dev_idx = split_indices(data.labels, job.dev_fraction, job.seed)
    if job.max_train_samples is not None:
        train_idx = train_idx[: job.max_train_samples]
    dev_idx = _cap_dev(dev_idx, job)
    record = {
        "dataset": job.dataset,
        "seed": job.seed,
        "dev_fraction": job.dev_fraction,
        "total": len(data),
        "train_size": len(train_idx),
        "dev_size": len(dev_idx),
        "label_names": data.label_names,
        "dev_indices": dev_idx,
    }
    return Split(data.subset(train_idx), data.subset(dev_idx), record)


def _cap_dev(dev_idx: list[int], job: JobConfig) -> list[int]:
    """``max_dev_samples`` of the dev indices, a seeded choice kept in order."""
    if job.max_dev_samples is None:
        return dev_idx
    gen = torch.Generator().manual_seed(job.seed + 1)
    keep = sorted(torch.randperm(len(dev_idx), generator=gen)[: job.max_dev_samples].tolist())
    return [dev_idx[j] for j in keep]


def given_split(train: Any, dev: Any | None, job: JobConfig) -> Split:
    """The split of the caller's own tables (``datasets.Dataset`` objects given to ``train()``).

    With ``dev`` the split is exactly those two tables (after the sample
    caps: a seeded subset of each); without it, dev is held out of ``train``
    by the seeded split, as for a file. ``split.json`` says which
    (``source``) and lists dev indices into the table dev came from.
    """
    tables = [read_table(train, "train_data")]
    if dev is not None:
        tables.append(read_table(dev, "dev_data"))
    parts = labelled(tables, job.text_column, job.label_column)
    _check_classes(parts[0], job, "train_data")
    if dev is None:
        split = make_split(parts[0], job)
        return Split(split.train, split.dev, {**split.record, "source": "train_data"})
    train_data, dev_data = parts
    train_idx = list(range(len(train_data)))
    if job.max_train_samples is not None:
        gen = torch.Generator().manual_seed(job.seed)
        train_idx = sorted(
            torch.randperm(len(train_idx), generator=gen).tolist()[: job.max_train_samples]
        )
    dev_idx = _cap_dev(list(range(len(dev_data))), job)
    record = {
        "dataset": job.dataset,
        "source": "train_data + dev_data",
        "seed": job.seed,
        "total": len(train_data) + len(dev_data),
        "train_size": len(train_idx),
        "dev_size": len(dev_idx),
        "label_names": train_data.label_names,
        "dev_indices": dev_idx,
    }
    return Split(train_data.subset(train_idx), dev_data.subset(dev_idx), record)


# --- tokens and batches --------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids per example (unpadded) and labels."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


# Examples tokenised per call, so a progress bar can move on large sets.
ENCODE_CHUNK = 2048


def encode(data: TextDataset, tokenizer: Any, max_length: int, desc: str = "tokenising") -> Encoded:
    """Tokenise once up front; padding happens per batch (dynamic padding). A progress bar
    appears when it takes more than two seconds."""
    from tqdm import tqdm

    ids: list[list[int]] = []
    chunks = range(0, len(data.texts), ENCODE_CHUNK)
    for start in tqdm(
        chunks, desc=desc, unit="chunk", delay=2, leave=False, disable=not sys.stderr.isatty()
    ):
        part = data.texts[start : start + ENCODE_CHUNK]
        ids += [
            list(x) for x in tokenizer(part, truncation=True, max_length=max_length)["input_ids"]
        ]
    return Encoded(ids, list(data.labels))


def collate(examples: Encoded, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the chosen examples to the longest of them."""
    rows = [examples.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        input_ids[j, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[j, : len(row)] = 1
    labels = torch.tensor([examples.labels[i] for i in indices], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# Length grouping: sort this many global batches' worth of examples by length at a time.
GROUP_BATCHES = 50


@dataclass(frozen=True)
class BatchPlan:
    """Which examples make micro-batch number g, on this rank.

    Each epoch starts from a permutation seeded by (seed, epoch). With
    ``lengths`` the permutation is cut into windows of GROUP_BATCHES global
    batches, each window is sorted by length and cut into batches, and the
    batch order is shuffled again: batches hold examples of similar length,
    so dynamic padding wastes little (transformers' ``group_by_length``
    idea), while the order stays a pure function of (seed, epoch). A global
    micro-batch holds ``batch_size * world_size`` examples; rank r takes its
    contiguous share. With one process the last short batch is kept; with
    several it is dropped so that every rank runs the same number of steps.
    """

    num_examples: int
    batch_size: int
    seed: int
    world_size: int = 1
    rank: int = 0
    lengths: tuple[int, ...] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def per_epoch(self) -> int:
        if self.world_size == 1:
            return math.ceil(self.num_examples / self.batch_size)
        return max(1, self.num_examples // self.global_batch)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global micro-batches of one epoch, in order."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_examples, generator=gen).tolist()
        size = self.global_batch
        if self.lengths is not None:
            window = size * GROUP_BATCHES
            grouped = []
            for i in range(0, len(order), window):
                grouped += sorted(order[i : i + window], key=lambda j: -self.lengths[j])
            order = grouped
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        batches = batches[: self.per_epoch]  # drops the short one under DDP
        if self.lengths is not None:
            shuffle = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[j] for j in shuffle]
        return batches

    def batches(self, start: int = 0) -> Iterator[tuple[int, list[int]]]:
        """Yield (g, indices) for micro-batches g = start, start+1, ... forever."""
        g = start
        epoch, cached = -1, []
        while True:
            e, within = divmod(g, self.per_epoch)
            if e != epoch:
                epoch, cached = e, self.epoch_batches(e)
            chunk = cached[within]
            share = math.ceil(len(chunk) / self.world_size)
            yield g, chunk[self.rank * share : (self.rank + 1) * share]
            g += 1


def eval_batches(
    num_examples: int,
    batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Dev set strided over ranks (rank r gets examples r, r+W, ...), longest first when
    ``lengths`` are given (less padding; the caller restores the order by index)."""
    mine = list(range(rank, num_examples, world_size))
    if lengths is not None:
        mine.sort(key=lambda i: -lengths[i])
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
