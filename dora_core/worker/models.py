"""Model loading for sequence classification: presets, local folders, GGUF files, cached hub ids.

Encoders use their classification head; decoder-only models use their
``*ForSequenceClassification`` head, which reads the last non-pad token, so
they need a pad token (the EOS token when the tokenizer has none). Which
layers to adapt is ``dora_core.targets``' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dora_core.contracts.job import JobConfigError
from dora_core.contracts.presets import MODELS


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are: a folder (plus a GGUF file inside it) or a hub id."""

    location: str
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model(name: str) -> ModelSource:
    """Turn the job's ``model`` into a loadable source, or fail with the fix."""
    if name in MODELS:
        preset = MODELS[name]
        path = preset.path()
        if path is None:
            raise JobConfigError(
                [("model", f"preset {name!r} is not installed; {preset.install_hint}")]
            )
        source = _from_path(path)
    elif Path(name).exists():
        source = _from_path(Path(name))
    elif name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise JobConfigError(
            [
                (
                    "model",
                    f"{name!r} does not exist; give a preset ({', '.join(MODELS)}) or an existing folder",
                )
            ]
        )
    elif not _in_hub_cache(name):
        raise JobConfigError(
            [
                (
                    "model",
                    f"{name!r} is not a preset ({', '.join(MODELS)}), a local folder, or a model in the local hub cache; use a preset or download it first",
                )
            ]
        )
    else:
        source = ModelSource(name)
    if source.gguf_file:
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise JobConfigError(
                [("model", "GGUF models need the gguf package; pip install gguf")]
            ) from None
    return source


def _from_path(path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise JobConfigError(
                [("model", f"{path} is a file but not a .gguf model; give the model's folder")]
            )
        return ModelSource(str(path.parent), path.name)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(str(path), ggufs[0].name)
        raise JobConfigError(
            [
                (
                    "model",
                    f"{path} has no config.json; give a transformers model folder (save_pretrained output)",
                )
            ]
        )
    return ModelSource(str(path))


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.location, **source.kwargs())


def load_tokenizer(source: ModelSource) -> Any:
    """The model's tokenizer, with a pad token (EOS for decoders that lack one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs())
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise JobConfigError(
                [
                    (
                        "model",
                        "the tokenizer has neither a pad nor an EOS token; add a pad token to the model folder",
                    )
                ]
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: ModelSource, num_labels: int, pad_token_id: int, label_names: list[str] | None = None
) -> nn.Module:
    """A sequence-classification model with ``num_labels`` outputs (new head weights)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()  # the "newly initialized head" report is expected
    model = AutoModelForSequenceClassification.from_pretrained(
        source.location, num_labels=num_labels, **source.kwargs()
    )
    if source.gguf_file:
        as_plain_float(model)
    model.config.pad_token_id = pad_token_id
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    return model


def as_plain_float(model: nn.Module) -> None:
    """A model loaded from a GGUF file holds dequantised float weights but still carries the
    GGUF quantizer, which makes ``save_pretrained`` refuse ("not serializable"). Drop the
    marker: it is an ordinary float model, saved and loaded without ``gguf_file``."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
