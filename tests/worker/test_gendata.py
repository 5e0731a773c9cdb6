"""Generative data: label masks, truncation, chat rendering, bbc-summary, seq2seq, ROUGE.

Hand-computed cases on a word-level tokenizer (one token per word, ids known)."""

from __future__ import annotations

import pytest
import torch

from dora_core.worker.gendata import (
    IGNORE,
    GenDataError,
    GenExample,
    bbc_summary,
    collate_generative,
    encode_causal,
    encode_seq2seq,
    from_chat,
    from_pairs,
    split_article,
)
from dora_core.worker.rouge import rouge
from tests.worker.conftest import _tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    """Decoder-style: no special tokens added, EOS = [EOS] (id 4)."""
    return _tokenizer(bos_eos=True)


def ids(tok, text: str) -> list[int]:
    return [tok.convert_tokens_to_ids(w) for w in text.split()]


def test_labels_mask_exactly_the_prompt_tokens(tok) -> None:
    [ex] = from_pairs([{"prompt": "the film was", "completion": "good"}], "prompt", "completion")
    enc = encode_causal([ex], tok, max_length=16)
    eos = tok.eos_token_id
    assert enc.input_ids == [[*ids(tok, "the film was good"), eos]]
    assert enc.labels == [[IGNORE] * 3 + ids(tok, "good") + [eos]]
    both = encode_causal([ex], tok, max_length=16, train_on_prompt=True)
    assert both.labels == both.input_ids


def test_truncation_keeps_the_completion_and_cuts_the_middle_of_the_prompt(tok) -> None:
    ex = GenExample("the movie plot was really", "good fine")
    eos = tok.eos_token_id
    enc = encode_causal([ex], tok, max_length=5)  # completion + EOS = 3, room for 2 prompt tokens
    assert enc.input_ids == [[*ids(tok, "the movie good fine"), eos]]  # room // 4 = 0: no tail
    assert enc.prompt_lens == [2]
    # room 8 -> tail 2, head 6 of a 10-token prompt: tokens 7 and 8 go.
    long = GenExample("the movie plot was really quite a story the film", "good")
    enc = encode_causal([long], tok, max_length=10)
    assert enc.input_ids == [[*ids(tok, "the movie plot was really quite the film good"), eos]]
    assert enc.labels[0] == [IGNORE] * 8 + ids(tok, "good") + [eos]
    with pytest.raises(GenDataError, match=r"^max_length: example 0's completion needs 3 tokens"):
        encode_causal([ex], tok, max_length=3)


def test_plain_text_is_all_targets(tok) -> None:
    enc = encode_causal([GenExample("", "the film was good")], tok, max_length=16)
    assert enc.labels == enc.input_ids


def test_the_loss_is_cross_entropy_over_completion_tokens_only(tok, tiny_llama) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama)  # same word-level vocabulary as tok
    examples = [GenExample("the film was", "good"), GenExample("a story", "really quite bad")]
    enc = encode_causal(examples, tok, max_length=16)
    batch = collate_generative(enc, [0, 1], pad_id=0)
    assert batch["labels"][0].tolist()[-1] == IGNORE  # padding is never a target
    with torch.no_grad():
        out = model(**batch)
    # Manual: next-token cross-entropy at every position whose *next* token is a completion token.
    losses = []
    for row, (inp, lab) in enumerate(zip(enc.input_ids, enc.labels, strict=True)):
        logp = torch.log_softmax(out.logits[row].float(), dim=-1)
        for t in range(1, len(inp)):
            if lab[t] != IGNORE:
                losses.append(-logp[t - 1, inp[t]])
    assert len(losses) == (1 + 1) + (3 + 1)  # completion tokens + EOS per example
    torch.testing.assert_close(out.loss, torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)


CHAT = [{"role": "user", "content": "the film was"}, {"role": "assistant", "content": "good"}]


def test_chat_rows_render_as_the_tokenizer_does() -> None:
    tok = _tokenizer(bos_eos=True)
    tok.chat_template = CHAT_TEMPLATE
    messages = CHAT
    [ex] = from_chat([{"messages": messages}], tok)
    full = tok.apply_chat_template(messages, tokenize=False)
    assert ex.prompt + ex.completion == full
    assert ex.prompt.endswith("assistant : ") and ex.completion == "good [EOS] "
    assert not ex.eos  # the template's end-of-turn marker ends the reply
    enc = encode_causal([ex], tok, max_length=32)
    assert [t for t in enc.labels[0] if t != IGNORE] == ids(tok, "good [EOS]")


def test_bad_chat_rows_name_the_field(tok) -> None:
    plain = _tokenizer(bos_eos=True)
    with pytest.raises(GenDataError, match=r"^chat_template: the model's tokenizer has no chat"):
        from_chat([{"messages": [{"role": "assistant", "content": "x"}]}], plain)
    plain.chat_template = CHAT_TEMPLATE
    with pytest.raises(GenDataError, match=r"^messages: chat row 1 has no 'messages' list"):
        from_chat([{"messages": CHAT}, {"text": "hi"}], plain)
    with pytest.raises(GenDataError, match="must be the assistant's"):
        from_chat([{"messages": CHAT[:1] * 2}], plain)
    with pytest.raises(GenDataError, match="at least one message before"):
        from_chat([{"messages": CHAT[1:]}], plain)
    with pytest.raises(GenDataError, match=r"^completion_column: row 0 has no 'answer'"):
        from_pairs([{"prompt": "a"}], "prompt", "answer")


ARTICLE = """Ad sales boost profit

Quarterly profits at the US media giant jumped 76% to $1.13bn for the three months to December.

The firm, which is now one of the biggest investors in Google, benefited from sales of
high-speed internet connections and higher advert sales. {more}
"""


def test_bbc_summary_takes_the_lead_as_summary_and_drops_short_or_repeated(tmp_path) -> None:
    more = " ".join(["Sales rose again in the fourth quarter."] * 6)
    headline, lead, body = split_article(ARTICLE.format(more=more))
    assert headline == "Ad sales boost profit"
    assert lead.startswith("Quarterly profits") and lead.endswith("December.")
    assert body.startswith("The firm, which") and "\n" not in body
    (tmp_path / "business").mkdir()
    (tmp_path / "tech").mkdir()
    (tmp_path / "business" / "001.txt").write_text(ARTICLE.format(more=more))
    (tmp_path / "tech" / "002.txt").write_text(ARTICLE.format(more=more))  # the same lead again
    (tmp_path / "tech" / "003.txt").write_text("Title\n\nToo short a lead.\n\n" + more)
    (tmp_path / "tech" / "004.txt").write_text(ARTICLE.format(more=""))  # body under 40 words
    long_lead = " ".join(["Profits rose."] * 31)  # 62 words: paragraphs run together
    (tmp_path / "tech" / "005.txt").write_text(f"Title\n\n{long_lead}\n\n{more}")
    [ex] = bbc_summary(tmp_path)
    assert ex.completion == " " + lead
    assert ex.prompt.startswith("Summarize the article in one sentence.\n\nArticle: The firm")
    assert ex.prompt.endswith("\n\nSummary:") and lead not in ex.prompt


def test_bbc_summary_from_the_installed_corpus() -> None:
    from dora_core.contracts.presets import DATASETS

    examples = bbc_summary(DATASETS["bbc-news"].path())
    assert 1500 < len(examples) <= 2225
    assert len({ex.completion for ex in examples}) == len(examples)


def test_seq2seq_source_to_the_encoder_target_as_labels() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "b", "c", "d"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    t5_like = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    enc = encode_seq2seq([GenExample("a b c d", " c d")], t5_like, max_length=4)
    assert enc.input_ids == [[3, 4, 5, 1]]  # truncated to 4 with </s> kept last
    assert enc.labels == [[5, 6, 1]]


def test_rouge_matches_a_hand_count() -> None:
    # ref: the cat lay on a mat / pred: the cat sat on the mat
    # unigrams shared: the, cat, on, mat (4 of 6 each side) -> F1 2/3; bigrams: the-cat
    # (1 of 5) -> 0.2; LCS the-cat-on-mat = 4 -> 2/3.
    got = rouge(["the cat sat on the mat"], ["the cat lay on a mat"])
    assert got == pytest.approx({"rouge1": 2 / 3, "rouge2": 0.2, "rougeL": 2 / 3})
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        rouge(["a"], ["a", "b"])


def test_a_file_loads_the_tokenizer_only_for_chat_rows(tmp_path) -> None:
    """Reading prompt/completion rows must not pay for a tokenizer; chat rows load it once."""
    import json

    from dora_core.contracts.job import parse_job_config
    from dora_core.worker.gendata import load_gen_dataset

    pairs, chat = tmp_path / "pairs.jsonl", tmp_path / "chat.jsonl"
    pairs.write_text(json.dumps({"prompt": "the film was", "completion": " good"}) + "\n")
    chat.write_text(json.dumps({"messages": CHAT}) + "\n")
    loads: list[int] = []

    def load():
        loads.append(1)
        tok = _tokenizer(bos_eos=True)
        tok.chat_template = CHAT_TEMPLATE
        return tok

    base = {"task": "causal-lm", "model": "minilm", "output_dir": str(tmp_path / "run")}
    data = load_gen_dataset(parse_job_config({**base, "dataset": str(pairs)}), load)
    assert [(ex.prompt, ex.completion) for ex in data.examples] == [("the film was", " good")]
    assert loads == []
    data = load_gen_dataset(parse_job_config({**base, "dataset": str(chat)}), load)
    assert data.examples[0].completion == "good [EOS] " and loads == [1]
