"""Beam search and left-padded batches: token-for-token parity with transformers' generate on a
tiny random GPT-2, batches equal to prompts alone, no-repeat n-grams, stop tokens and strings;
beams on the engine's slots (allocated once, one forward a step), char-RNN beams too."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.beam import beam_search
from lmforge.generation.engine import Engine
from lmforge.generation.generate import FINISHED, generate, generate_text, generate_texts
from lmforge.generation.sampling import no_repeat_ngram_filter
from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.tokenizers.base import train_tokenizer

EOS = 5
V = 60


@pytest.fixture(scope="module")
def pair():
    """(transformers GPT2LMHeadModel, our GPTCausalLM) holding the same random weights."""
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import config_from_hf, from_hf_state_dict

    torch.manual_seed(1)
    hf_config = transformers.GPT2Config(
        vocab_size=V,
        n_positions=48,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    reference = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.normal_(std=0.3 if "wte" in name else 0.1)  # peaky: eos ends some beams early
    config = config_from_hf(hf_config.to_dict())
    model = GPTCausalLM(config).eval()
    model.load_state_dict(from_hf_state_dict(reference.state_dict(), config))
    return reference, model


def hf_beams(reference, prompt, num_return=4, **options):
    ids = torch.tensor([prompt])
    out = reference.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        num_beams=4,
        num_return_sequences=num_return,
        eos_token_id=EOS,
        pad_token_id=EOS,
        **options,
    )
    rows = []
    for row in out[:, len(prompt) :].tolist():  # finished rows are padded with eos after eos
        cut = row.index(EOS) + 1 if EOS in row else len(row)
        rows.append(row[:cut])
    return rows


PROMPTS = [[1, 2, 3], [7, 30, 11, 4, 19], [42], [9, 9, 9, 9], [13, 58, 21, 40, 3, 17, 2]]


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(length_penalty=0.5),
        dict(length_penalty=2.0, early_stopping="never"),
        dict(early_stopping=True),
        dict(no_repeat_ngram_size=2),
    ],
    ids=["default", "short", "never", "early", "ngram"],
)
def test_beams_match_transformers(pair, options):
    reference, model = pair
    ended_early = 0
    for prompt in PROMPTS:
        expected = hf_beams(reference, prompt, max_new_tokens=16, **options)
        ours = beam_search(
            model, prompt, 16, num_beams=4, num_return=4, stop_token_ids=[EOS], **options
        )[0]
        assert [h.token_ids for h in ours] == expected
        ended_early += sum(h.token_ids[-1] == EOS for h in ours)
        scores = [h.score for h in ours]
        assert scores == sorted(scores, reverse=True)
    if not options:
        assert ended_early > 0  # the stop-token path was exercised


def test_batched_beams_equal_each_prompt_alone(pair):
    _, model = pair
    together = beam_search(model, PROMPTS, 12, num_beams=4, num_return=2, stop_token_ids=[EOS])
    for prompt, beams in zip(PROMPTS, together):
        alone = beam_search(model, prompt, 12, num_beams=4, num_return=2, stop_token_ids=[EOS])[0]
        assert [h.token_ids for h in beams] == [h.token_ids for h in alone]
        assert [h.score for h in beams] == pytest.approx([h.score for h in alone], abs=1e-4)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_mixed_length_batch_equals_each_prompt_alone(position):
    config = GPTConfig(vocab_size=V, max_seq_len=16, embed_dim=32, num_heads=4, position=position)
    model = GPTCausalLM(config).eval()
    prompts = [[1, 2, 3], [7, 30, 11, 4, 19, 22, 8, 1, 5], [42]]
    # 20 new tokens pass the 16-token context: the window slides for every row
    batch = torch.stack(list(generate(model, prompts, 20, temperature=0, left_pad=True)), 1)
    assert batch.shape == (3, 20) and FINISHED not in batch  # every row emits from step one
    for row, prompt in zip(batch, prompts):
        alone = torch.stack(list(generate(model, prompt, 20, temperature=0)), 1)[0]
        assert row.tolist() == alone.tolist()


def test_left_padded_sampling_is_seeded_and_stops_per_row(pair):
    _, model = pair
    prompts = [[1, 2, 3], [7, 30, 11, 4, 19]]
    kw = dict(temperature=1.0, top_k=20, seed=3, left_pad=True, stop_token_ids=[EOS])
    first = torch.stack(list(generate(model, prompts, 30, **kw)), 1)
    assert torch.equal(first, torch.stack(list(generate(model, prompts, 30, **kw)), 1))
    for row in first.tolist():
        if EOS in row:  # nothing after a row's stop token
            assert set(row[row.index(EOS) + 1 :]) <= {FINISHED}


def test_no_repeat_ngram_filter():
    ids = torch.tensor([[1, 2, 3, 1, 2], [4, 4, 4, 4, 4]])
    out = no_repeat_ngram_filter(torch.zeros(2, 6), ids, 3)
    assert out[0].isinf().nonzero().flatten().tolist() == [3]  # "1 2" was followed by 3
    assert out[1].isinf().nonzero().flatten().tolist() == [4]
    padded = torch.tensor([[True, True, False, True, True], [True] * 5])
    assert not no_repeat_ngram_filter(torch.zeros(2, 6), ids, 3, padded)[0].isinf().any()
    assert no_repeat_ngram_filter(torch.zeros(1, 6), ids[:1, :2], 3).isinf().sum() == 0
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        no_repeat_ngram_filter(torch.zeros(1, 6), ids, 0)


def test_no_repeat_ngram_with_beams_and_sampling(pair):
    _, model = pair
    for hyp in beam_search(model, [9, 9, 3], 30, num_beams=4, num_return=4, no_repeat_ngram_size=2)[
        0
    ]:
        seq = [9, 9, 3] + hyp.token_ids
        grams = list(zip(seq, seq[1:]))
        assert len(grams[1:]) == len(set(grams[1:]))  # only the prompt's own "9 9" may repeat
    seq = [1, 2] + [
        int(t) for t in generate(model, [1, 2], 30, temperature=0, no_repeat_ngram_size=2)
    ]
    grams = list(zip(seq, seq[1:]))
    assert len(grams) == len(set(grams))


def test_is_stopped_callback_equals_stop_token_ids(pair):
    _, model = pair
    stop = 17
    by_token = beam_search(model, PROMPTS[:3], 16, num_beams=4, num_return=4, stop_token_ids=[stop])
    by_check = beam_search(
        model, PROMPTS[:3], 16, num_beams=4, num_return=4, is_stopped=lambda ids: ids[-1] == stop
    )
    assert by_token == by_check


def test_stop_strings_with_beams(pair):
    _, model = pair
    letters = "abcdefghijklmnopqrstuvwxyz"
    tok = train_tokenizer("char", [letters + letters.upper() + " .,!?'-:"])
    assert tok.vocab_size == V
    free = generate_texts(model, tok, ["hello", "a"], max_new_tokens=20, num_beams=4, num_samples=4)
    assert len(free) == 8
    stop = next(free[0][i : i + 2] for i in range(3, len(free[0]) - 2))
    texts = generate_texts(
        model, tok, ["hello", "a"], max_new_tokens=20, num_beams=4, num_samples=4, stop=[stop]
    )
    assert len(texts) == 8 and all(stop not in t for t in texts)
    assert texts[0] != free[0]
    best = "".join(generate_text(model, tok, "hello", max_new_tokens=20, num_beams=4, stop=[stop]))
    assert best == texts[0]


def test_bad_beam_arguments(pair):
    _, model = pair
    with pytest.raises(ConfigError, match="num_return"):
        beam_search(model, [1, 2], 5, num_beams=2, num_return=3)
    with pytest.raises(ConfigError, match="early_stopping"):
        beam_search(model, [1, 2], 5, early_stopping="sometimes")
    with pytest.raises(ConfigError, match="num_beams"):
        beam_search(model, [1, 2], 5, num_beams=0)
    with pytest.raises(ConfigError, match="left_pad"):
        generate(_NoPadding(), [[1], [2, 3]], 3, left_pad=True)
    with pytest.raises(ConfigError, match="needs a model with step_slots"):
        beam_search(_StepOnly(), [1], 3)


class _NoPadding(GPTCausalLM):
    """A causal LM whose step() takes no padding mask (like a recurrent net)."""

    def __init__(self):
        super().__init__(GPTConfig(vocab_size=V))

    def step(self, token_ids, state):
        return super().step(token_ids, state)


class _StepOnly(torch.nn.Module):
    """A causal LM with init_state() and step() only: no slots, so no engine and no beams."""

    def __init__(self):
        super().__init__()
        self.inner = GPTCausalLM(GPTConfig(vocab_size=V))
        self.config = self.inner.config

    def init_state(self, batch_size, device=None):
        return self.inner.init_state(batch_size, device)

    def step(self, token_ids, state, padding_mask=None):
        return self.inner.step(token_ids, state, padding_mask)


def test_a_prompt_longer_than_the_context_keeps_its_tail_with_one_warning(caplog):
    config = GPTConfig(vocab_size=V, max_seq_len=16, embed_dim=32, num_heads=4)
    model = GPTCausalLM(config).eval()
    prompt = [(7 * i) % V for i in range(40)]
    with caplog.at_level("WARNING"):
        (best,) = beam_search(model, prompt, 5, num_beams=2)[0]
    assert [r.message for r in caplog.records] == [
        "prompt of 40 tokens is longer than the model's context (max_seq_len=16) allows; "
        "keeping its last 15 tokens"
    ]
    # the one free position of the context: one new token, as for that tail alone
    assert best == beam_search(model, prompt[-15:], 5, num_beams=2)[0][0]
    assert len(best.token_ids) == 1


# ---------------------------------------------------------------- on the engine


@pytest.mark.parametrize("options", [dict(), dict(length_penalty=2.0, early_stopping="never")])
def test_prompts_of_different_lengths_in_one_call_match_transformers(pair, options):
    reference, model = pair
    together = beam_search(
        model, PROMPTS, 16, num_beams=4, num_return=4, stop_token_ids=[EOS], **options
    )
    for prompt, beams in zip(PROMPTS, together):
        expected = hf_beams(reference, prompt, max_new_tokens=16, **options)
        assert [h.token_ids for h in beams] == expected


def test_each_prompt_keeps_its_own_room_in_the_context():
    """A 14-token prompt of a 16-token context has room for 2 new tokens, a 3-token one for 13:
    beside each other each gets its own, as alone (no stop token: every beam runs to its end)."""
    torch.manual_seed(0)
    model = GPTCausalLM(GPTConfig(vocab_size=V, max_seq_len=16, embed_dim=32, num_heads=4)).eval()
    prompts = [[1, 2, 3], list(range(20, 34)), [7, 30, 11, 4, 19, 22, 8, 1, 5]]
    together = beam_search(model, prompts, 13, num_beams=3, num_return=3)
    for prompt, beams in zip(prompts, together):
        assert {len(h.token_ids) for h in beams} == {min(13, 16 - len(prompt))}
        alone = beam_search(model, prompt, 13, num_beams=3, num_return=3)[0]
        assert [h.token_ids for h in beams] == [h.token_ids for h in alone]
        assert [h.score for h in beams] == pytest.approx([h.score for h in alone], abs=1e-4)


def tiny_rnn(vocab_size=V, cell="lstm"):
    torch.manual_seed(0)
    model = CharRNNCausalLM(
        CharRNNConfig(vocab_size=vocab_size, embed_dim=8, hidden_dim=16, cell=cell)
    ).eval()
    with torch.no_grad():  # peaky, so that beams part ways
        model.head.weight.mul_(4)
    return model


def _state_pointers(state) -> list[int]:
    if isinstance(state, list):  # a transformer: one SlotKVCache per layer
        return [t.data_ptr() for c in state for t in (c.k, c.v)]
    return [t.data_ptr() for t in (state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("family", ["gpt", "lstm"])
def test_the_slots_are_allocated_once_and_each_step_is_one_forward(pair, family, monkeypatch):
    model = pair[1] if family == "gpt" else tiny_rnn()
    calls = []  # per forward: the state's pointers and its groups' (rows, tokens per row)
    forward = Engine.forward_slots

    def spy(engine, groups):
        calls.append(
            (_state_pointers(engine.state), [(len(r), ids.shape[1]) for ids, r, _ in groups])
        )
        return forward(engine, groups)

    monkeypatch.setattr(Engine, "forward_slots", spy)
    prompts = PROMPTS[:3]
    beam_search(model, prompts, 10, num_beams=4, stop_token_ids=[EOS])
    assert len({tuple(p) for p, _ in calls}) == 1  # the same tensors throughout
    assert calls[0][1] == [(1, len(p)) for p in prompts]  # every prompt read once, one forward
    assert 2 <= len(calls) <= 10  # then one forward a step (the last step needs none)
    for _, groups in calls[1:]:  # all live beams of every prompt together, a token each
        assert len(groups) == 1 and groups[0][1] == 1 and groups[0][0] % 4 == 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_rnn_beams_of_a_batch_equal_each_prompt_alone(cell):
    model = tiny_rnn(cell=cell)
    together = beam_search(model, PROMPTS, 12, num_beams=4, num_return=3, stop_token_ids=[EOS])
    for prompt, beams in zip(PROMPTS, together):
        alone = beam_search(model, prompt, 12, num_beams=4, num_return=3, stop_token_ids=[EOS])
        assert [h.token_ids for h in beams] == [h.token_ids for h in alone[0]]


def canon_gpt(vocab_size: int) -> GPTCausalLM:
    """A GPT with Canon layers, whose slots hold each position's inputs beside keys and values."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, max_seq_len=16, embed_dim=32, num_heads=4)
    model = GPTCausalLM(GPTConfig(**{**config.__dict__, "canon": 3, "position": "rotary"}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(std=0.5 if "canon" in name or "embed" in name else 0.1)
    return model.eval()


@pytest.mark.parametrize("family", ["lstm", "canon-gpt"])
def test_beams_wide_enough_find_the_best_sequence(family):
    """With num_beams = V ** 2 no 3-token sequence is ever dropped: the best beams are the best
    of all V ** 3, each scored as full forwards score it (the reorders copied every slot
    right, not only the best beam's)."""
    v = 8
    model = tiny_rnn(vocab_size=v) if family == "lstm" else canon_gpt(v)
    prompt = [3, 1, 4]
    beams = beam_search(model, prompt, 3, num_beams=v * v, num_return=8, length_penalty=0.0)[0]
    seqs = torch.cartesian_prod(*[torch.arange(v)] * 3)  # (v ** 3, 3)
    ids = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        log_probs = model(ids[:, :-1]).float().log_softmax(-1)[:, len(prompt) - 1 :]
    totals = log_probs.gather(-1, seqs[:, :, None])[..., 0].sum(-1)
    best = totals.topk(8)
    assert [h.token_ids for h in beams] == seqs[best.indices].tolist()
    assert [h.score for h in beams] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_beams_that_do_not_fit_in_memory_are_one_line_naming_the_fix(pair, monkeypatch):
    from lmforge.generation import engine as engine_module

    _, model = pair
    # 2 prompts x 4 beams = 8 slots of 5 + 5 positions; memory for 5 of them
    monkeypatch.setattr(engine_module, "available_memory_bytes", lambda: model.slot_bytes(5, 10))
    with pytest.raises(ConfigError, match="8 slots of 10 positions need") as e:
        beam_search(model, [[1, 2, 3, 4, 5], [6]], 5, num_beams=4)
    assert "\n" not in str(e.value)
    assert "search at most 5 beams at once (fewer prompts, a smaller num_beams" in str(e.value)
