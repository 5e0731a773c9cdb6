"""User tables beyond CSV/JSONL: Parquet files, hf:NAME[:CONFIG] from the local datasets cache
(offline), and datasets.Dataset objects given to train().

The cache is written the way a hub download leaves it: a builder with the
hub id (``repo_id``) prepares its splits into ``<cache>/<namespace>___<name>/
<config>/<version>/<hash>/``, in a temp HF_HOME / HF_DATASETS_CACHE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from dora_core.contracts.job import JobConfigError, parse_job_config
from dora_core.worker.data import given_split, load_dataset, read_user_rows
from tests.worker.conftest import sentiment_rows

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TRAIN = [{"text": f"train review {i}", "label": i % 2} for i in range(10)]
TEST = [{"text": f"test review {i}", "label": 1} for i in range(4)]


class TinyReviews(datasets.GeneratorBasedBuilder):
    """A hub-style dataset with a ClassLabel column whose names are not in sorted order."""

    BUILDER_CONFIGS: ClassVar = [datasets.BuilderConfig(name="plain_text")]

    def _info(self):
        return datasets.DatasetInfo(
            features=datasets.Features(
                {
                    "text": datasets.Value("string"),
                    "label": datasets.ClassLabel(names=["pos", "neg"]),
                }
            )
        )

    def _split_generators(self, dl_manager):
        return [
            datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"rows": TRAIN}),
            datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"rows": TEST}),
        ]

    def _generate_examples(self, rows):
        yield from enumerate(rows)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """tester/tiny_reviews (config plain_text) in a fresh datasets cache, as the hub leaves it."""
    cache = tmp_path / "hf" / "datasets"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    builder = TinyReviews(
        cache_dir=str(cache),
        dataset_name="tiny_reviews",
        repo_id="tester/tiny_reviews",
        config_name="plain_text",
        hash="0" * 40,
    )
    builder.download_and_prepare()
    assert (cache / "tester___tiny_reviews" / "plain_text").is_dir()
    return cache


def _job(dataset: str, **fields) -> dict:
    return {"model": "minilm", "dataset": dataset, **fields}


def test_parquet_file_reads_like_a_csv(tmp_path) -> None:
    path = tmp_path / "reviews.parquet"
    pq.write_table(
        pa.table(
            {
                "review": ["a fine film", "dull", "", "superb", "awful"],
                "sentiment": ["pos", "neg", "pos", "pos", None],
                "stars": [4, 1, 3, 5, 0],
            }
        ),
        path,
    )
    assert read_user_rows(path)[1] == {"review": "dull", "sentiment": "neg", "stars": 1}
    data = load_dataset(
        parse_job_config(_job(str(path), text_column="review", label_column="sentiment"))
    )
    # Rows without text or label are left out; string labels sort: neg = 0, pos = 1.
    assert data.texts == ["a fine film", "dull", "superb"]
    assert data.labels == [1, 0, 1]
    assert data.label_names == ["neg", "pos"]


def test_parquet_written_by_datasets_keeps_its_class_names(tmp_path) -> None:
    path = tmp_path / "reviews.parquet"
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])}
    )
    datasets.Dataset.from_list(TRAIN, features=features).to_parquet(str(path))
    data = load_dataset(parse_job_config(_job(str(path))))
    assert data.label_names == ["pos", "neg"]  # the feature's order, not sorted
    assert data.labels == [row["label"] for row in TRAIN]


def test_a_file_that_is_not_parquet_is_one_line(tmp_path) -> None:
    path = tmp_path / "reviews.parquet"
    path.write_text("text,label\nhi,1\n")
    with pytest.raises(JobConfigError) as info:
        load_dataset(parse_job_config(_job(str(path))))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("dataset: ") and "not a readable Parquet file" in str(
        info.value
    )


@pytest.mark.parametrize("spec", ["hf:tester/tiny_reviews", "hf:tester/tiny_reviews:plain_text"])
def test_hf_spec_reads_the_cached_train_split(hf_cache, spec) -> None:
    job = parse_job_config(_job(spec))
    data = load_dataset(job)
    assert data.texts == [row["text"] for row in TRAIN]  # train only, never the test split
    assert data.labels == [row["label"] for row in TRAIN]
    assert data.label_names == ["pos", "neg"]
    assert job.display_name == "dora-minilm-tiny_reviews" + ("-plain_text" if ":p" in spec else "")
    # The one table reader serves the generative tasks too: rows as dicts.
    assert read_user_rows(spec) == TRAIN


def test_an_uncached_hf_dataset_is_one_line_naming_it(hf_cache) -> None:
    with pytest.raises(JobConfigError) as info:
        load_dataset(parse_job_config(_job("hf:nobody/absent")))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dataset: hf:nobody/absent is not in the local datasets cache")
    assert str(hf_cache) in message and "load_dataset('nobody/absent')" in message


def test_an_uncached_config_names_the_cached_ones(hf_cache) -> None:
    with pytest.raises(JobConfigError) as info:
        load_dataset(parse_job_config(_job("hf:tester/tiny_reviews:other")))
    assert "\n" not in str(info.value)
    assert "'other'" in str(info.value) and "plain_text" in str(info.value)


def test_an_hf_spec_never_reads_a_local_folder_of_that_name(
    hf_cache, tmp_path, monkeypatch
) -> None:
    """load_dataset("reviews") would read ./reviews/*.csv; an hf: spec asks the cache only."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nhi,1\nho,0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JobConfigError, match="not in the local datasets cache"):
        load_dataset(parse_job_config(_job("hf:reviews")))


@pytest.mark.parametrize("spec", ["hf:", "hf:../etc", "hf:a/b/c", "hf:/abs", "hf:x:bad config"])
def test_malformed_hf_specs_are_refused_by_the_schema(spec) -> None:
    with pytest.raises(JobConfigError) as info:
        parse_job_config(_job(spec))
    assert info.value.errors[0][0] == "dataset"
    assert "hf:NAME" in str(info.value) or "config" in str(info.value)


@pytest.mark.slow
def test_dora_train_with_an_uncached_hf_dataset_exits_2_with_one_line(tmp_path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job("hf:nobody/absent", output_dir=str(tmp_path / "run"))))
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "DORA_API_URL": "",
    }
    out = subprocess.run(
        [sys.executable, "-m", "dora_core.worker.cli", "train", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("dora train: error: dataset: hf:nobody/absent is not in the local")
    assert not (tmp_path / "run").exists()


def test_given_train_and_dev_tables_share_one_label_encoding() -> None:
    train = datasets.Dataset.from_list(
        [{"t": "a", "y": "pos"}, {"t": "b", "y": "neg"}, {"t": "c", "y": "pos"}]
    )
    dev = datasets.Dataset.from_list([{"t": "d", "y": "mixed"}, {"t": "e", "y": "neg"}])
    job = parse_job_config(_job("my-data", text_column="t", label_column="y"))
    split = given_split(train, dev, job)
    # Sorted over both tables: mixed = 0, neg = 1, pos = 2; every row kept, in order.
    assert split.train.texts == ["a", "b", "c"] and split.train.labels == [2, 1, 2]
    assert split.dev.texts == ["d", "e"] and split.dev.labels == [0, 1]
    assert split.record["label_names"] == ["mixed", "neg", "pos"]
    assert split.record["source"] == "train_data + dev_data"
    capped = given_split(
        train,
        dev,
        parse_job_config(_job("x", text_column="t", label_column="y", max_train_samples=2)),
    )
    assert len(capped.train) == 2 and set(capped.train.texts) <= {"a", "b", "c"}


def test_something_else_than_a_dataset_is_one_line() -> None:
    job = parse_job_config(_job("x"))
    with pytest.raises(JobConfigError) as info:
        given_split({"text": ["a"], "label": [1]}, None, job)
    assert str(info.value).startswith("train_data: is a dict; give a datasets.Dataset")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN)})
    with pytest.raises(JobConfigError, match=r"pass one split, e.g. data\['train'\]"):
        given_split(dd, None, job)


@pytest.mark.slow
def test_train_on_dataset_objects_uses_them_as_the_split(tmp_path) -> None:
    """train(job, train_data=ds, dev_data=ds2) on the bundled MiniLM: those rows, no seeded split."""
    from dora_core.contracts.presets import MODELS
    from dora_core.worker.train.loop import Telemetry, train

    if not MODELS["minilm"].available:
        pytest.skip("the MiniLM package is not installed")
    rows = sentiment_rows(60)
    train_ds = datasets.Dataset.from_list(rows[:48])
    dev_ds = datasets.Dataset.from_list(rows[48:])
    job = parse_job_config(
        _job(
            "my-reviews",
            text_column="review",
            label_column="sentiment",
            max_steps=4,
            batch_size=8,
            max_length=16,
            eval_every=4,
            target_rank=2,
            prune_interval=1,
            output_dir=str(tmp_path / "run"),
            device="cpu",
        )
    )
    with pytest.raises(JobConfigError, match="dev_data: given without train_data"):
        train(job, dev_data=dev_ds, telemetry=Telemetry(api_url=None), progress=False)
    outcome = train(
        job, train_data=train_ds, dev_data=dev_ds, telemetry=Telemetry(api_url=None), progress=False
    )
    assert outcome.status == "completed"
    split = json.loads((outcome.run_dir / "split.json").read_text())
    assert split["source"] == "train_data + dev_data"
    assert (split["train_size"], split["dev_size"]) == (48, 12)
    assert split["dev_indices"] == list(range(12))
    assert split["label_names"] == ["neg", "pos"]
    # The final evaluation ran on the 12 dev rows: accuracy is a multiple of 1/12.
    accuracy = outcome.result["metrics"]["accuracy"]
    assert round(accuracy * 12, 6) == round(accuracy * 12)
    assert (outcome.run_dir / "adapter" / "adapter_config.json").is_file()
