"""Which modules to adapt, and where each sits in the model (block index, type).

Names are matched against ``model.named_modules()``. A plain dotted entry
("query", "attention.output.dense") is a suffix: it matches a name equal to
it or ending in "." + it. An entry with other regex syntax, or a target given
as one string, is a regex that must match the whole name (PEFT's convention).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from dora_core.layer import SUPPORTED_TYPES

# Default projections per model family (config.model_type): attention and FFN.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": [
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # T5 v1.0 has wi, v1.1 / mT5 wi_0 and wi_1: a family default keeps the suffixes it finds.
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
_FAMILY_OF = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "distilbert": "distilbert",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "t5": "t5",
    "mt5": "t5",
    "umt5": "t5",
    "bart": "bart",
    "mbart": "bart",
    "pegasus": "bart",
    "marian": "bart",
}
# Task heads transformers puts on sequence-classification models.
DEFAULT_HEADS = ["classifier", "score"]

_PLAIN = re.compile(r"[\w.]+")


def name_matches(name: str, pattern: str, *, regex: bool = False) -> bool:
    """Suffix match for plain dotted names, full regex match otherwise."""
    if not regex and _PLAIN.fullmatch(pattern):
        return name == pattern or name.endswith("." + pattern)
    return re.fullmatch(pattern, name) is not None


def _patterns(spec: list[str] | str) -> list[tuple[str, bool]]:
    return [(spec, True)] if isinstance(spec, str) else [(p, False) for p in spec]


def _stacks(model: nn.Module) -> dict[str, int]:
    """The block lists of a model (ModuleLists not inside another one) -> the global index of
    their first block: one list (offset 0) for an encoder or a decoder, the encoder's then
    the decoder's for an encoder-decoder, so their blocks are numbered apart."""
    stacks: dict[str, int] = {}
    offset = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(s + ".") for s in stacks):
            stacks[name] = offset
            offset += len(module)
    return stacks


def block_position(model: nn.Module, name: str) -> tuple[int | None, str]:
    """(block index, module type) from the module path.

    The block is the element of the outermost nn.ModuleList on the path
    ("bert.encoder.layer.3.attention.self.query" -> (3, "attention.self.query")).
    An encoder-decoder numbers its decoder blocks after the encoder's (T5-small:
    "decoder.block.0.layer.1.EncDecAttention.q" -> (6, "EncDecAttention.q")), and a
    list inside a block drops out of the type, so cross-attention is its own type and
    the same projection has one type in both stacks. Modules outside any ModuleList
    get (None, full name).
    """
    parts = name.split(".")
    module = model
    for i, part in enumerate(parts[:-1]):
        module = getattr(module, part)
        if isinstance(module, nn.ModuleList) and parts[i + 1].isdigit():
            offset = _stacks(model).get(".".join(parts[: i + 1]), 0)
            return offset + int(parts[i + 1]), _type_below(
                module[int(parts[i + 1])], parts[i + 2 :]
            )
    return None, name


def _type_below(block: nn.Module, parts: list[str]) -> str:
    """The path below a block, without the name and index of a ModuleList inside it."""
    kept: list[str] = []
    module, skip = block, False
    for part in parts:
        child = getattr(module, part)
        if skip:
            skip = False
        elif isinstance(child, nn.ModuleList):
            skip = True  # drop the list's name and, next, its index
        else:
            kept.append(part)
        module = child
    return ".".join(kept)


def supported_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / Conv1D by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SUPPORTED_TYPES)}


def _describe_names(model: nn.Module, names: Iterable[str]) -> str:
    """Short list of distinct module types (the names below their block)."""
    kinds = list(dict.fromkeys(block_position(model, n)[1] for n in names))
    shown = ", ".join(kinds[:30])
    return shown + (", ..." if len(kinds) > 30 else "")


def default_targets(model: nn.Module) -> list[str]:
    """The family's default suffixes present in the model, by config.model_type or by what
    the model contains."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = list(supported_modules(model))

    def present(suffixes: list[str]) -> list[str]:
        return [s for s in suffixes if any(name_matches(n, s) for n in names)]

    family = _FAMILY_OF.get(model_type or "")
    if family is not None and present(DEFAULT_TARGETS[family]):
        return present(DEFAULT_TARGETS[family])
    for suffixes in DEFAULT_TARGETS.values():
        if all(any(name_matches(n, s) for n in names) for s in suffixes):
            return suffixes
    raise ValueError(
        f"target_modules: no default for model type {model_type!r}; list the layers to adapt, "
        f"e.g. some of: {_describe_names(model, names)}"
    )


def find_targets(model: nn.Module, spec: list[str] | str | None) -> list[str]:
    """Names of the modules to adapt, in model order; ValueError when a pattern matches nothing."""
    candidates = supported_modules(model)
    spec = default_targets(model) if spec is None else spec
    chosen: set[str] = set()
    for pattern, regex in _patterns(spec):
        hits = {n for n in candidates if name_matches(n, pattern, regex=regex)}
        if not hits:
            raise ValueError(
                f"target_modules: {pattern!r} matches no nn.Linear or Conv1D layer; "
                f"names available: {_describe_names(model, candidates)}"
            )
        chosen |= hits
    return [n for n in candidates if n in chosen]


def find_heads(model: nn.Module, spec: list[str] | None) -> list[str]:
    """Names of the modules trained fully (modules_to_save); None = the usual heads if present."""
    names = [n for n, _ in model.named_modules() if n]
    if spec is None:
        return [n for n in names if n in DEFAULT_HEADS]
    chosen: list[str] = []
    for pattern in spec:
        hits = [n for n in names if name_matches(n, pattern)]
        if not hits:
            top = ", ".join(n for n in names if "." not in n)
            raise ValueError(
                f"modules_to_save: {pattern!r} matches no module; top-level modules: {top}"
            )
        chosen += [n for n in hits if n not in chosen]
    # A module inside another chosen one is covered by its parent.
    return [n for n in chosen if not any(n.startswith(p + ".") for p in chosen if p != n)]
