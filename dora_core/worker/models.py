"""Model loading per task: presets, local folders, GGUF files, cached hub ids.

Classification: encoders use their classification head; decoder-only models
use their ``*ForSequenceClassification`` head, which reads the last non-pad
token, so they need a pad token (the EOS token when the tokenizer has none).
``causal-lm`` loads ``AutoModelForCausalLM``, ``seq2seq``
``AutoModelForSeq2SeqLM``; both keep their own LM head (frozen, no new
weights). Which layers to adapt is ``dora_core.targets``' business.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dora_core.contracts.job import JobConfigError
from dora_core.contracts.presets import MODELS

log = logging.getLogger("dora.models")


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
        return dequantised_copy(source)
    return source


def cache_dir() -> Path:
    """Where converted models are kept: $DORA_CACHE_DIR, else ~/.cache/dora."""
    env = os.environ.get("DORA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dora"


def dequantised_copy(source: ModelSource) -> ModelSource:
    """A GGUF model as an ordinary float transformers folder, converted once and cached.

    transformers dequantises a GGUF file on every load (SmolLM2-135M: about 50 s of a
    2-core machine for the tokenizer and the weights); the float copy loads in a second
    or two and gives the same weights. The cache key is the file's path, size and mtime,
    so a replaced file is converted again; the copy is written to a temporary folder and
    renamed, so concurrent jobs never read half a copy.
    """
    gguf = Path(source.location) / str(source.gguf_file)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "gguf" / f"{gguf.stem}-{key[:16]}"
    if (target / "config.json").is_file():
        return ModelSource(str(target))
    import transformers

    log.info("converting %s to a float model in %s (once; later jobs load the copy)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        transformers.logging.set_verbosity_error()
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.location, **source.kwargs())
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source.location, **source.kwargs()
        )
        as_plain_float(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another job finished the same copy first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ModelSource(str(target))


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


def load_tokenizer(source: ModelSource, chat_template: str | None = None) -> Any:
    """The model's tokenizer, with a pad token (EOS for decoders that lack one) and, when
    given, the job's chat template (saved with the adapter, so inference renders alike)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs())
    if chat_template is not None:
        tokenizer.chat_template = chat_template
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


def auto_class(task: str) -> Any:
    """The transformers Auto class that loads a model for ``task``."""
    import transformers

    return {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }[task]


def load_model(
    source: ModelSource,
    num_labels: int,
    pad_token_id: int,
    label_names: list[str] | None = None,
    task: str = "classification",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The model for ``task``: a classifier with ``num_labels`` outputs (new head weights), or
    a causal / seq2seq LM with its own head; ``dtype``: load the weights in it (a bf16 base
    on a GPU, ``precision.base_dtype``), else as stored."""
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialized head" report is expected
    extra: dict[str, Any] = {"num_labels": num_labels} if task == "classification" else {}
    if dtype is not None:
        extra[_dtype_keyword(transformers.__version__)] = dtype
    model = auto_class(task).from_pretrained(source.location, **extra, **source.kwargs())
    if source.gguf_file:
        as_plain_float(model)
    model.config.pad_token_id = pad_token_id
    if task != "classification":
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_token_id
        return model
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    return model


def _dtype_keyword(version: str) -> str:
    """from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype``
    before (still accepted, with a deprecation warning)."""
    from packaging.version import Version

    return "dtype" if Version(version) >= Version("4.56") else "torch_dtype"


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing on a transformers model, or the one a PEFT model
    wraps: each block's activations are recomputed in the backward pass. Non-reentrant,
    so gradients reach adapters inside a block whether or not its inputs require grad."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5 (the new name)
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def as_plain_float(model: nn.Module) -> None:
    """A model loaded from a GGUF file holds dequantised float weights but still carries the
    GGUF quantizer, which makes ``save_pretrained`` refuse ("not serializable"). Drop the
    marker: it is an ordinary float model, saved and loaded without ``gguf_file``."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
