"""next_token_table and inspect_prompt: the real softmax of the last position, ranked; prompt
tokens as they read; one map per layer; clear errors for prompts and k that cannot work."""

import logging

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.inspect.next_token import (
    inspect_prompt,
    next_token_table,
    token_text,
    top_next_tokens,
)
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.tokenizers.char import CharTokenizer
from lmforge.tokenizers.word import WordTokenizer

REVIEWS = [
    "wine review : Germany : Mosel : Riesling : crisp apple, lime and slate.",
    "wine review : Italy : Tuscany : Sangiovese : cherry, leather & dried herbs.",
    "wine review : US : California : Pinot Noir : ripe cherry and vanilla <oak>.",
]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.train(REVIEWS, vocab_size=60)


@pytest.fixture
def model(tok):
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, max_seq_len=12, embed_dim=32, num_heads=2, num_layers=2
    )
    return GPTCausalLM(cfg).eval()


def test_table_is_the_softmax_of_the_last_position_best_first(model, tok):
    prompt = "wine review : germany"
    rows = next_token_table(model, tok, prompt, k=5)
    assert len(rows) == 5
    probs = model(torch.tensor([tok.encode(prompt)]))[0, -1].softmax(-1)
    expected = probs.topk(5)
    assert [r.token_id for r in rows] == expected.indices.tolist()
    torch.testing.assert_close(torch.tensor([r.prob for r in rows]), expected.values)
    assert [r.prob for r in rows] == sorted((r.prob for r in rows), reverse=True)
    assert [r.token for r in rows] == [tok.decode([r.token_id]) for r in rows]


def test_inspect_prompt_gives_tokens_maps_and_the_same_table(model, tok):
    prompt = "Wine review : Italy : Tuscany"
    seen = inspect_prompt(model, tok, prompt, k=3)
    assert seen.tokens == ["wine", "review", ":", "italy", ":", "tuscany"]
    assert seen.token_ids == tok.encode(prompt)
    assert [m.shape for m in seen.attention] == [(2, 6, 6)] * 2
    torch.testing.assert_close(seen.attention[1].sum(-1), torch.ones(2, 6))
    assert seen.next_tokens == next_token_table(model, tok, prompt, k=3)


def test_the_model_mode_is_restored(model, tok):
    model.train()
    inspect_prompt(model, tok, "wine review", k=2)
    assert model.training


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(model, tok, caplog):
    long = " ".join(["wine"] * 10 + ["red", "dry", "crisp"])  # 13 tokens, context 12
    with caplog.at_level(logging.WARNING):
        seen = inspect_prompt(model, tok, long)
    assert seen.token_ids == tok.encode(long)[-12:]  # as generation keeps them
    assert seen.attention[0].shape[-1] == 12
    assert [r.message for r in caplog.records if "keeping its last 12" in r.message]
    last = next_token_table(model, tok, long)
    assert [r.token_id for r in last] == [r.token_id for r in seen.next_tokens]


def test_k_is_clipped_to_the_vocabulary(model, tok):
    V = tok.vocab_size
    assert len(next_token_table(model, tok, "wine", k=V)) == V
    assert len(next_token_table(model, tok, "wine", k=V + 7)) == V
    with pytest.raises(ConfigError, match="positive"):
        inspect_prompt(model, tok, "wine", k=0)


def test_a_classifier_lists_its_labels_clipped_to_their_number():
    from lmforge.models.bert import BertConfig, BertTextClassifier
    from lmforge.tokenizers.base import train_tokenizer

    tok = train_tokenizer("wordpiece", ["a fine wine , a dull wine"] * 20, vocab_size=60)
    config = BertConfig(vocab_size=tok.vocab_size, max_seq_len=8, embed_dim=16, num_heads=2,
                        num_layers=1, ffn_dim=32)  # fmt: skip
    model = BertTextClassifier(config, num_classes=2, labels=["bad", "good"]).eval()
    seen = inspect_prompt(model, tok, "a fine wine " * 5, k=5)  # default k 5 > 2 labels
    assert sorted(t.token for t in seen.next_tokens) == ["bad", "good"]
    assert abs(sum(t.prob for t in seen.next_tokens) - 1.0) < 1e-5
    ids = seen.token_ids  # [START] the last 6 tokens that fit [END]
    assert len(ids) == 8 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id


def test_an_empty_prompt_is_an_error(model, tok):
    with pytest.raises(ConfigError, match="no tokens"):
        inspect_prompt(model, tok, "   ")


def test_token_text_shows_line_breaks_and_unknown_ids():
    tok = CharTokenizer.train("ab\n")
    assert token_text(tok, tok.encode("\n")[0]) == "\u21b5"
    rows = top_next_tokens(torch.tensor([0.0, 0.0, 0.0, 5.0]), tok, k=1)
    assert rows[0].token == "<id 3>" and rows[0].token_id == 3  # a model row past the vocab
