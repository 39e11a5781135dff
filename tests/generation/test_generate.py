"""The decode loop: reproducibility, greedy parity with full forwards, stops, the sliding
window, ragged prompts, and the text layer (incremental decoding, stop strings)."""

import logging
from types import SimpleNamespace

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.generate import FINISHED, generate, generate_text, generate_texts
from lmforge.generation.sampling import apply_repetition_penalty
from lmforge.models.base import Backbone, CausalLM
from lmforge.models.gpt import GPTCausalLM, GPTConfig


@pytest.fixture
def gpt():
    config = GPTConfig(
        vocab_size=40, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64
    )
    return GPTCausalLM(config).eval()


def run(model, prompt, max_new_tokens, **kwargs) -> torch.Tensor:
    """All yielded steps stacked: (B, steps)."""
    return torch.stack(list(generate(model, prompt, max_new_tokens, **kwargs)), dim=1)


def greedy_by_full_forward(model, prompt, max_new_tokens, penalty=1.0):
    """Reference: argmax of a full forward over (at most) the last max_seq_len tokens."""
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(seq[:, -model.config.max_seq_len :])[:, -1]
            logits = apply_repetition_penalty(logits, seq, penalty)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(prompt) :].tolist()


def test_seed_makes_samples_reproducible(gpt):
    first = run(gpt, [1, 2, 3], 10, seed=7, top_k=20, num_samples=3)
    assert first.shape == (3, 10)
    assert torch.equal(first, run(gpt, [1, 2, 3], 10, seed=7, top_k=20, num_samples=3))
    assert not torch.equal(first, run(gpt, [1, 2, 3], 10, seed=8, top_k=20, num_samples=3))


def test_greedy_equals_argmax_of_full_forwards(gpt):
    out = run(gpt, [5, 9, 2, 11], 10, temperature=0)
    assert out[0].tolist() == greedy_by_full_forward(gpt, [5, 9, 2, 11], 10)


def test_sliding_window_past_the_context(gpt):
    prompt = list(range(10))
    out = run(gpt, prompt, 25, temperature=0)  # 35 tokens through a 16-token context
    assert out[0].tolist() == greedy_by_full_forward(gpt, prompt, 25)


def test_repetition_penalty_matches_the_reference(gpt):
    out = run(gpt, [3, 3, 4], 12, temperature=0, repetition_penalty=1.5)
    assert out[0].tolist() == greedy_by_full_forward(gpt, [3, 3, 4], 12, penalty=1.5)


def test_long_prompt_keeps_its_tail_and_warns(gpt, caplog):
    prompt = list(range(30))
    with caplog.at_level(logging.WARNING, logger="lmforge.generation.generate"):
        out = run(gpt, prompt, 3, temperature=0)
    assert "keeping its last 16 tokens" in caplog.text
    assert out[0].tolist() == greedy_by_full_forward(gpt, prompt[-16:], 3)


def test_rows_are_prompt_major(gpt):
    out = run(gpt, [[1, 2], [3, 4]], 5, temperature=0, num_samples=3)
    assert out.shape == (6, 5)
    assert torch.equal(out[0], out[2]) and torch.equal(out[3], out[5])
    assert out[0].tolist() == greedy_by_full_forward(gpt, [1, 2], 5)
    assert out[3].tolist() == greedy_by_full_forward(gpt, [3, 4], 5)


def test_prompts_of_different_lengths(gpt):
    out = run(gpt, [[7, 1, 2], [4, 5, 6, 8, 9]], 6, temperature=0)
    assert out.shape == (2, 8)  # the short row starts 2 steps earlier
    short = out[0][out[0] != FINISHED].tolist()
    long = out[1][out[1] != FINISHED].tolist()
    assert out[0, -2:].tolist() == [FINISHED] * 2 and out[1, :2].tolist() == [FINISHED] * 2
    assert short == greedy_by_full_forward(gpt, [7, 1, 2], 6)
    assert long == greedy_by_full_forward(gpt, [4, 5, 6, 8, 9], 6)


def test_stop_token_ends_a_row(gpt):
    expected = greedy_by_full_forward(gpt, [1, 2, 3], 8)
    stop = expected[3]
    out = run(gpt, [[1, 2, 3], [1, 2, 3]], 8, temperature=0, stop_token_ids=[stop])
    cut = expected.index(stop) + 1
    assert out.shape == (2, cut)  # every row stopped, so the loop ended early
    assert out[0].tolist() == expected[:cut]  # the stop token itself is yielded


def test_finished_rows_yield_minus_one_while_others_go_on(gpt):
    a = greedy_by_full_forward(gpt, [1, 2, 3], 6)
    b = greedy_by_full_forward(gpt, [9, 8, 7], 6)
    stop = next(t for t in a if t not in b)
    out = run(gpt, [[1, 2, 3], [9, 8, 7]], 6, temperature=0, stop_token_ids=[stop])
    cut = a.index(stop) + 1
    assert out[0].tolist() == a[:cut] + [FINISHED] * (6 - cut)
    assert out[1].tolist() == b


def test_nothing_for_zero_tokens_and_training_mode_is_restored(gpt):
    assert list(generate(gpt, [1], 0)) == []
    gpt.train()
    list(generate(gpt, [1], 3))
    assert gpt.training


def test_tensors_and_inference_mode_do_not_leak(gpt):
    steps = generate(gpt, torch.tensor([[1, 2], [3, 4]]), 3)
    next(steps)
    assert not torch.is_inference_mode_enabled()  # between steps the caller's mode is back


def test_bad_arguments_fail_at_the_call(gpt):
    with pytest.raises(ConfigError, match="empty"):
        generate(gpt, [[1, 2], []], 5)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(gpt, [1], -1)
    with pytest.raises(ConfigError, match="top_p"):
        generate(gpt, [1], 5, top_p=0.0)


class ScriptedLM(CausalLM):
    """A model with no context limit and an int as its state: after the prompt it predicts the
    script, one token per step. It shows generate() needs nothing but init_state and step."""

    def __init__(self, script: list[int], prompt_len: int, vocab_size: int = 256):
        super().__init__(Backbone(SimpleNamespace(vocab_size=vocab_size)))
        self.script, self.prompt_len, self.vocab_size = script, prompt_len, vocab_size

    def init_state(self, batch_size, device=None):
        return 0  # tokens seen so far

    def step(self, token_ids, state):
        B, t = token_ids.shape
        logits = torch.zeros(B, t, self.vocab_size)
        for j in range(t):
            k = min(max(state + j + 1 - self.prompt_len, 0), len(self.script) - 1)
            logits[:, j, self.script[k]] = 100.0  # certain even when sampled
        return logits, state + t


class ByteTokenizer:
    """UTF-8 bytes as ids: one character may take several tokens, like byte-level BPE."""

    def __init__(self, eos_id=None):
        self.eos_id = eos_id

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def scripted(text: str, prompt: str = "> ", eos_id=None):
    tok = ByteTokenizer(eos_id)
    script = tok.encode(text) + ([eos_id] if eos_id is not None else [])
    return ScriptedLM(script, len(tok.encode(prompt))), tok


def test_state_free_models_generate_past_any_length():
    model, _ = scripted("abc" * 100)
    out = run(model, [1, 2], 300, temperature=0)
    assert bytes(out[0].tolist()).decode() == "abc" * 100


def test_text_comes_out_whole_across_multibyte_characters():
    text = "héllo ☃ wörld"
    model, tok = scripted(text)
    pieces = list(
        generate_text(model, tok, "> ", max_new_tokens=len(tok.encode(text)), temperature=0)
    )
    assert "".join(pieces) == text and len(pieces) > 1
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("stop", [["\n\n"], ["wör", "zzz"], ["o ☃"]])
def test_stop_strings_end_the_text_and_are_not_yielded(stop):
    text = "héllo ☃\n\nwörld and more"
    model, tok = scripted(text)
    pieces = list(generate_text(model, tok, "> ", max_new_tokens=40, stop=stop, temperature=0))
    cut = min(i for i in (text.find(s) for s in stop) if i >= 0)
    assert "".join(pieces) == text[:cut]


def test_a_partial_stop_string_is_released_when_it_does_not_complete():
    model, tok = scripted("a\nb\n\nc")
    pieces = list(generate_text(model, tok, "> ", max_new_tokens=20, stop=["\n\n"], temperature=0))
    assert "".join(pieces) == "a\nb"


def test_eos_ends_generation_and_is_not_text():
    model, tok = scripted("done.", eos_id=0)
    pieces = list(generate_text(model, tok, "> ", max_new_tokens=50, temperature=0))
    assert "".join(pieces) == "done."


def test_generate_texts_returns_one_text_per_row():
    model, tok = scripted("one two three", eos_id=0)
    texts = generate_texts(model, tok, ["> ", "> "], max_new_tokens=30, stop=[" t"], num_samples=2)
    assert texts == ["one"] * 4


def test_generate_text_makes_one_sample(gpt):
    with pytest.raises(ConfigError, match="generate_texts"):
        generate_text(gpt, ByteTokenizer(), "x", num_samples=2)


def test_model_generate_delegates(gpt):
    out = torch.stack(list(gpt.generate([5, 9, 2, 11], 4, temperature=0)), dim=1)
    assert out[0].tolist() == greedy_by_full_forward(gpt, [5, 9, 2, 11], 4)


def test_an_empty_prompt_starts_from_the_special_token():
    model, tok = scripted("hi", prompt="x", eos_id=0)  # "x": a one-token prompt, like [eos]
    assert "".join(generate_text(model, tok, "", max_new_tokens=5, temperature=0)) == "hi"
    with pytest.raises(ConfigError, match="non-empty prompt"):
        generate_text(model, ByteTokenizer(), "", max_new_tokens=5)


def test_text_is_decoded_without_special_tokens_even_when_they_do_not_stop():
    from lmforge.tokenizers.base import train_tokenizer

    tok = train_tokenizer("bpe", ["hello world, and more words " * 20], vocab_size=280)
    script = tok.encode("hello") + [tok.eos_id] + tok.encode(" world")
    model = ScriptedLM(script, prompt_len=1, vocab_size=tok.vocab_size)
    kw = dict(max_new_tokens=len(script), temperature=0, stop_token_ids=[])
    assert "".join(generate_text(model, tok, "x", **kw)) == "hello world"
    assert generate_texts(model, tok, ["x", "x"], **kw) == ["hello world"] * 2
    assert "".join(generate_text(model, tok, "x", max_new_tokens=9, temperature=0)) == "hello"


@pytest.mark.parametrize("left_pad", [False, True])
def test_memory_follows_the_tokens_made_not_those_asked_for(gpt, left_pad):
    # nothing is allocated per requested token: 10**12 would need terabytes up front
    prompts = [[1, 2, 3], [4, 5]]
    steps = generate(gpt, prompts, 10**12, seed=0, left_pad=left_pad)
    first = torch.stack([next(steps) for _ in range(5)], dim=1)
    assert first.tolist() == run(gpt, prompts, 8, seed=0, left_pad=left_pad)[:, :5].tolist()


def test_the_history_grows_past_its_first_allocation(gpt):
    # 150 tokens outgrow the first buffer; the penalty reads every token of the history
    out = run(gpt, [3, 3, 4], 150, temperature=0, repetition_penalty=1.5)
    assert out[0].tolist() == greedy_by_full_forward(gpt, [3, 3, 4], 150, penalty=1.5)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_several_texts_keep_the_space_after_a_word_level_prompt(num_beams):
    from lmforge.tokenizers.base import train_tokenizer

    tok = train_tokenizer("word", ["romeo : the light breaks . juliet : what light ?"] * 5)
    model = GPTCausalLM(
        GPTConfig(vocab_size=tok.vocab_size, max_seq_len=16, embed_dim=16, num_heads=2)
    ).eval()
    kw = dict(max_new_tokens=6, seed=1, num_beams=num_beams)
    texts = generate_texts(model, tok, "romeo :", num_samples=2, **kw)
    assert any(texts), texts  # (a random model may end a sample at once with its end token)
    assert all(t.startswith(" ") and not t.startswith("  ") for t in texts if t), texts
    if num_beams == 1:  # one sample: the same text the streaming path gives
        one = generate_texts(model, tok, "romeo :", num_samples=1, **kw)
        assert one == ["".join(generate_text(model, tok, "romeo :", **kw))]
