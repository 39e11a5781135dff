"""The engine: batched decoding equals decoding alone (both families, ragged joins, sliding past
the context), seeded streams independent of their neighbours, cancel, stops, logprobs, a cache
allocated once, and one-line errors."""

import logging
from types import SimpleNamespace

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.engine import PREFILL_FIRST_TOKENS, Engine, SamplingParams
from lmforge.generation.generate import generate
from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
from lmforge.models.gpt import GPTCausalLM, GPTConfig

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13], [3, 3, 3, 3, 3, 7]]


def tiny_gpt(position="learned", seed=0, canon=0):
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=40,
        max_seq_len=16,
        embed_dim=32,
        num_heads=4,
        num_layers=2,
        ffn_dim=64,
        position=position,
        canon=canon,
    )
    model = GPTCausalLM(config).eval()
    with torch.no_grad():  # Canon layers start as the identity: give them weights to use
        for name, p in model.named_parameters():
            if "canon" in name:
                p.normal_(std=0.3)
    return model


def tiny_rnn(cell="lstm"):
    torch.manual_seed(0)
    model = CharRNNCausalLM(CharRNNConfig(vocab_size=40, embed_dim=8, hidden_dim=16, cell=cell))
    with torch.no_grad():  # random weights this small predict one token whatever the input
        model.backbone.embed.weight.mul_(4)
        model.head.weight.mul_(8)
    return model


MODELS = {
    "gpt-learned": lambda: tiny_gpt("learned"),
    "gpt-rotary": lambda: tiny_gpt("rotary"),
    "gpt-sinusoidal": lambda: tiny_gpt("sinusoidal"),
    "gpt-canon": lambda: tiny_gpt("rotary", canon=4),  # each slot keeps its inputs
    "lstm": lambda: tiny_rnn("lstm"),
    "gru": lambda: tiny_rnn("gru"),
}


def greedy_alone(model, prompt, n, with_logprobs=False):
    """Reference without the engine: argmax of full forwards over the last max_seq_len tokens
    (a GPT), or the RNN's whole sequence from a zero state; and each token's log-probability."""
    context = getattr(model.config, "max_seq_len", None) or 10**9
    seq, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            row = model(torch.tensor([seq[-context:]]))[0, -1].log_softmax(-1)
            seq.append(int(row.argmax()))
            logprobs.append(float(row.max()))
    return (seq[len(prompt) :], logprobs) if with_logprobs else seq[len(prompt) :]


def assert_as_alone(model, prompt, handle, n):
    """The handle's tokens and their log-probabilities are those of the prompt decoded alone."""
    tokens, logprobs = greedy_alone(model, prompt, n, with_logprobs=True)
    assert handle.tokens == tokens, prompt
    assert [e.logprob for e in handle.logprobs] == pytest.approx(logprobs, abs=1e-4)


GREEDY = SamplingParams(10, temperature=0, logprobs=0)


@pytest.mark.parametrize("name", MODELS)
def test_batched_greedy_equals_each_prompt_alone(name):
    model = MODELS[name]()
    engine = Engine(model, slots=3, prefill_chunk=4)  # fewer slots than prompts: one waits
    greedy = SamplingParams(12, temperature=0, logprobs=0)  # 9 + 12 > 16: slides (GPT)
    handles = [engine.submit(p, greedy) for p in PROMPTS[:2]]
    engine.step()
    engine.step()  # the second prompt is still reading its 9 tokens, 4 a step
    handles += [engine.submit(p, greedy) for p in PROMPTS[2:]]
    engine.run()
    assert len({t for h in handles for t in h.tokens}) > 2  # the model's choice moves
    for prompt, handle in zip(PROMPTS, handles):
        assert_as_alone(model, prompt, handle, 12)
        assert handle.finish_reason == "length"


def test_a_seeded_stream_is_the_same_alone_and_beside_three_others():
    model = tiny_gpt()
    params = SamplingParams(max_new_tokens=20, temperature=1.2, top_k=30, seed=123)
    alone = Engine(model, slots=1).submit([5, 6, 7], params)
    alone_tokens = list(alone)

    engine = Engine(model, slots=4, prefill_chunk=2)
    others = [
        engine.submit([1, 2, 3, 4, 5, 6], SamplingParams(max_new_tokens=20, top_p=0.9)),
        engine.submit([9], SamplingParams(max_new_tokens=20, seed=5, min_p=0.1)),
    ]
    engine.step()
    beside = engine.submit([5, 6, 7], params)
    others.append(engine.submit([8, 8], SamplingParams(max_new_tokens=5, temperature=0)))
    engine.run()
    assert beside.tokens == alone_tokens
    # and the seed matters: another seed draws other tokens
    other_seed = SamplingParams(max_new_tokens=20, temperature=1.2, top_k=30, seed=124)
    assert list(Engine(model, slots=1).submit([5, 6, 7], other_seed)) != alone_tokens


def test_cancel_frees_the_slot_at_the_next_step_and_leaves_others_alone():
    model = tiny_gpt()
    engine = Engine(model, slots=2)
    a, b, c = (engine.submit(p, GREEDY) for p in PROMPTS[:3])
    for _ in range(3):
        engine.step()
    assert c.slot is None and a.slot is not None  # c waits for a slot
    freed = a.slot
    a.cancel()
    made = len(a.tokens)
    engine.step()
    assert c.slot == freed and a.finish_reason == "cancelled"
    engine.run()
    assert len(a.tokens) == made  # nothing after the cancel
    assert_as_alone(model, PROMPTS[1], b, 10)
    assert_as_alone(model, PROMPTS[2], c, 10)


def test_cancel_while_waiting_never_takes_a_slot():
    engine = Engine(tiny_gpt(), slots=1)
    a = engine.submit([1, 2], SamplingParams(max_new_tokens=3, temperature=0))
    b = engine.submit([3, 4], SamplingParams(max_new_tokens=3, temperature=0))
    b.cancel()
    engine.run()
    assert b.finish_reason == "cancelled" and b.tokens == [] and b.slot is None
    assert a.finish_reason == "length" and len(a.tokens) == 3


@pytest.mark.parametrize("name", ["gpt-rotary", "gpt-canon", "lstm"])
def test_a_slot_freed_between_others_is_refilled_while_they_decode(name):
    # slots 0..2 decode side by side; the middle one is cancelled, then taken by a long prompt
    # that prefills 2 tokens a step while its neighbours go on around it
    model = MODELS[name]()
    engine = Engine(model, slots=3, prefill_chunk=2)
    a, b, c = (engine.submit(p, GREEDY) for p in PROMPTS[:3])
    d = engine.submit(PROMPTS[1], GREEDY)
    for _ in range(6):
        engine.step()
    b.cancel()
    engine.run()
    assert d.slot == 1
    for prompt, handle in ((PROMPTS[0], a), (PROMPTS[2], c), (PROMPTS[1], d)):
        assert_as_alone(model, prompt, handle, 10)


class PairTokenizer:
    """Every id decodes to two characters, so a stop string can start inside a token."""

    eos_id = None

    def decode(self, ids):
        return "".join(chr(97 + i % 26) + chr(65 + i // 2 % 26) for i in ids)


def test_stop_strings_across_token_boundaries_stop_at_the_right_character():
    model, tok = tiny_gpt(), PairTokenizer()
    full = list(Engine(model, slots=1).submit([1, 2, 3], SamplingParams(20, temperature=0)))
    text = tok.decode(full)
    stop = text[9:12]  # ends token 4 and starts token 5: straddles a boundary, mid-token
    engine = Engine(model, slots=2, tokenizer=tok)
    params = SamplingParams(max_new_tokens=20, temperature=0, stop=[stop])
    handle = engine.submit([1, 2, 3], params)
    neighbour = engine.submit([7, 8], SamplingParams(max_new_tokens=20, temperature=0))
    pieces = list(handle.texts())
    cut = text.index(stop)
    assert handle.text == "".join(pieces) == text[:cut]
    assert handle.finish_reason == "stop"
    assert handle.tokens == full[: (cut + len(stop) + 1) // 2]  # up to the completing token
    engine.run()
    assert neighbour.tokens == greedy_alone(model, [7, 8], 20)


class ScriptedSlotLM(torch.nn.Module):
    """Reads its slots' positions only: after a one-token prompt it spells `script` (bytes)."""

    def __init__(self, script: bytes):
        super().__init__()
        self.script = script
        self.config = SimpleNamespace(vocab_size=256)

    def slot_bytes(self, slots, max_len):
        return 0

    def init_slots(self, slots, max_len, device=None):
        return None

    def step_slots(self, token_ids, state, rows, starts):
        n, T = token_ids.shape
        logits = torch.zeros(n, T, 256)
        for i in range(n):
            for t in range(T):
                logits[i, t, self.script[min(starts[i] + t, len(self.script) - 1)]] = 10.0
        return logits


class ByteTokenizer:
    eos_id = None

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize(
    "stop, expected", [("ö", "héllo w"), ("lo w", "hél"), ("d!", "héllo wörl"), ("zz", None)]
)
def test_stop_strings_never_cut_a_multibyte_character(stop, expected):
    script = "héllo wörld!".encode()
    engine = Engine(ScriptedSlotLM(script), slots=2, tokenizer=ByteTokenizer())
    params = SamplingParams(len(script), temperature=0, stop=[stop])
    handle = engine.submit([ord("x")], params)
    other = engine.submit([ord("x")], SamplingParams(len(script), temperature=0))
    pieces = list(handle.texts())
    engine.run()
    assert "".join(pieces) == handle.text == (expected or script.decode())
    assert all("\ufffd" not in piece for piece in pieces)
    assert handle.finish_reason == ("length" if expected is None else "stop")
    assert other.text == script.decode()


def test_stop_token_ids_end_a_stream_and_are_returned():
    model = tiny_gpt()
    expected = greedy_alone(model, [1, 2, 3], 10)
    stop = expected[4]
    handle = Engine(model).submit(
        [1, 2, 3], SamplingParams(10, temperature=0, stop_token_ids=[stop])
    )
    assert list(handle) == expected[: expected.index(stop) + 1]
    assert handle.finish_reason == "stop"


def test_logprobs_are_the_models_own_with_the_top_alternatives():
    model = tiny_gpt()
    engine = Engine(model, slots=2)
    handle = engine.submit([4, 5, 6], SamplingParams(6, temperature=0, logprobs=3))
    engine.submit([1], SamplingParams(6, seed=0))
    engine.run()
    seq = [4, 5, 6] + handle.tokens
    with torch.no_grad():
        reference = model(torch.tensor([seq]))[0].log_softmax(-1)  # (T, V)
    assert len(handle.logprobs) == 6
    for i, entry in enumerate(handle.logprobs):
        row = reference[2 + i]
        assert entry.token == handle.tokens[i]
        assert entry.logprob == pytest.approx(float(row[entry.token]), abs=1e-4)
        assert [t for t, _ in entry.top] == row.topk(3).indices.tolist()
        assert entry.top[0][0] == entry.token  # greedy picks the most probable
        assert [lp for _, lp in entry.top] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)


@pytest.mark.parametrize("name", ["gpt-learned", "gpt-canon", "lstm"])
def test_no_tensor_of_the_state_is_reallocated_while_decoding(name):
    engine = Engine(MODELS[name](), slots=3, prefill_chunk=3)

    def pointers():
        state = engine.state
        if isinstance(state, list):  # GPT: one SlotKVCache per layer
            return [t.data_ptr() for c in state for t in (c.k, c.v, *c.canon.values())]
        return [t.data_ptr() for t in (state if isinstance(state, tuple) else (state,))]

    before = pointers()
    handles = [engine.submit(p, SamplingParams(30, temperature=0)) for p in PROMPTS]
    while engine.has_work:
        engine.step()
        assert pointers() == before
    assert all(len(h.tokens) == 30 for h in handles)  # 30 + 9 > 16: the GPT slid too


def test_more_slots_than_memory_allows_is_one_line_naming_the_size_and_the_fix():
    with pytest.raises(
        ConfigError, match=r"10000000000 slots of 16 positions need [\d.]+ GiB"
    ) as e:
        Engine(tiny_gpt(), slots=10**10)
    assert "\n" not in str(e.value) and "pass slots=" in str(e.value)
    fit = int(str(e.value).split("pass slots=")[1].split()[0])
    assert 1 <= fit < 10**10


def test_generate_names_the_rows_when_their_slots_do_not_fit():
    with pytest.raises(ConfigError, match="make at most [0-9]+ rows at once") as e:
        generate(tiny_gpt(), [1, 2], 5, num_samples=10**10)
    assert "\n" not in str(e.value) and "--num-samples" in str(e.value)


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens_and_warns(caplog):
    model = tiny_gpt()
    long_prompt = list(range(1, 31))
    with caplog.at_level(logging.WARNING):
        handle = Engine(model).submit(long_prompt, SamplingParams(5, temperature=0))
    assert "keeping its last 16 tokens" in caplog.text
    assert list(handle) == greedy_alone(model, long_prompt[-16:], 5)


def test_zero_new_tokens_and_bad_requests():
    engine = Engine(tiny_gpt())
    assert engine.submit([1], SamplingParams(max_new_tokens=0)).finish_reason == "length"
    assert not engine.has_work
    with pytest.raises(ConfigError, match="empty"):
        engine.submit([])
    with pytest.raises(ConfigError, match="outside 0..39"):
        engine.submit([1, 40])
    with pytest.raises(ConfigError, match="tokenizer="):
        engine.submit([1], SamplingParams(stop=["x"]))
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ConfigError, match="logprobs"):
        SamplingParams(logprobs=-1)
    with pytest.raises(ConfigError, match="slots"):
        Engine(tiny_gpt(), slots=0)


def test_the_engine_leaves_the_models_training_mode_and_the_callers_grad_mode():
    model = tiny_gpt().train()
    handle = Engine(model).submit([1, 2], SamplingParams(3, temperature=0))
    next(iter(handle))
    assert model.training and not torch.is_inference_mode_enabled()


def test_the_engine_is_a_public_name():
    import lmforge

    assert lmforge.Engine is Engine and lmforge.SamplingParams is SamplingParams


def test_step_slots_reads_rows_that_are_not_side_by_side():
    # rows 0 and 2 (a gather) give what each gives alone (a view), prompts of unequal lengths
    model = tiny_gpt("rotary")
    with torch.no_grad():
        caches = model.init_slots(3, 16)
        model.step_slots(torch.tensor([[1, 2, 3, 4]]), caches, [0], [0])
        model.step_slots(torch.tensor([[5, 6]]), caches, [2], [0])
        both = model.step_slots(torch.tensor([[7, 8], [9, 10]]), caches, [0, 2], [4, 2])
        reference = [model(torch.tensor([p]))[0, -2:] for p in ([1, 2, 3, 4, 7, 8], [5, 6, 9, 10])]
    torch.testing.assert_close(both, torch.stack(reference), atol=1e-5, rtol=1e-4)


def test_threads_change_no_token_and_torch_gets_its_count_back():
    model = tiny_gpt()
    before = torch.get_num_threads()
    outs = []
    for threads in (1, 2, None):
        engine = Engine(model, slots=2, threads=threads)
        handles = [engine.submit(p, SamplingParams(6, temperature=0)) for p in PROMPTS[:2]]
        engine.run()
        assert torch.get_num_threads() == before
        outs.append([h.tokens for h in handles])
    assert outs[0] == outs[1] == outs[2] == [greedy_alone(model, p, 6) for p in PROMPTS[:2]]


def test_best_threads_is_one_or_every_core_and_probed_once(monkeypatch):
    from lmforge.generation import engine as engine_module
    from lmforge.system import usable_cpus

    model = tiny_gpt(seed=3)
    first = engine_module.best_threads(model, 1)
    assert first in (1, usable_cpus())
    monkeypatch.setattr(engine_module, "_probe_threads", lambda *a: pytest.fail("probed twice"))
    assert engine_module.best_threads(model, 1) == first
    with pytest.raises(ConfigError, match="threads=0"):
        Engine(model, threads=0)


def test_pick_threads_probes_before_the_first_step(monkeypatch):
    """A server picks both thread counts while loading: no later step, alone or batched, probes
    (and the tokens are those of decoding alone)."""
    from lmforge.generation import engine as engine_module

    model = tiny_gpt(seed=5)
    engine = Engine(model, slots=3)
    engine.pick_threads()
    assert set(engine._auto) == {False, True}
    monkeypatch.setattr(engine_module, "best_threads", lambda *a: pytest.fail("probed in a step"))
    alone = engine.submit(PROMPTS[0], SamplingParams(4, temperature=0))
    engine.run()
    batch = [engine.submit(p, SamplingParams(4, temperature=0)) for p in PROMPTS[:3]]
    engine.run()
    assert alone.tokens == greedy_alone(model, PROMPTS[0], 4)
    assert [h.tokens for h in batch] == [greedy_alone(model, p, 4) for p in PROMPTS[:3]]
    fixed = Engine(model, slots=2, threads=1)
    fixed.pick_threads()
    assert fixed._auto == {}


def test_int8_streams_batched_decode_as_they_do_alone():
    """Four rows run torch._int_mm (activations rounded per token), one row the packed kernel:
    a row's tokens do not depend on its neighbours, and its log-probabilities stay close."""
    from lmforge.layers.quant import quantize_

    model = tiny_gpt(seed=1)
    quantize_(model, "int8")
    params = SamplingParams(8, temperature=0, logprobs=0)
    alone = []
    for prompt in PROMPTS:
        engine = Engine(model, slots=1)
        alone.append(engine.submit(prompt, params))
        engine.run()
    engine = Engine(model, slots=4)
    together = [engine.submit(p, params) for p in PROMPTS]
    engine.run()
    assert len({t for h in together for t in h.tokens}) > 2  # the model's choice moves
    for a, b in zip(alone, together):
        assert a.tokens == b.tokens
        got = torch.tensor([x.logprob for x in b.logprobs])
        torch.testing.assert_close(
            got, torch.tensor([x.logprob for x in a.logprobs]), atol=0.05, rtol=0
        )


# ---------------------------------------------------------------- one forward a step


class CountForwards:
    """Records the groups of every model forward the engine makes: (rows, tokens) per group."""

    def __init__(self, model, monkeypatch):
        self.forwards = []
        step = model.step_slot_groups

        def counted(groups, caches):
            self.forwards.append([(len(rows), ids.shape[1]) for ids, rows, _ in groups])
            return step(groups, caches)

        monkeypatch.setattr(model, "step_slot_groups", counted)


@pytest.mark.parametrize("name", ["gpt-learned", "gpt-rotary", "gpt-canon"])
def test_several_joiners_are_prefilled_in_one_forward_beside_the_decoding_rows(name, monkeypatch):
    model = MODELS[name]()
    engine = Engine(model, slots=4, prefill_chunk=64, prefill_first=False)  # as on a GPU
    spy = CountForwards(model, monkeypatch)
    params = SamplingParams(6, temperature=0, logprobs=0)  # 9 + 6 < 16: nothing slides
    first = engine.submit(PROMPTS[0], params)
    engine.step()  # first prefills alone: one forward, one group
    joiners = [engine.submit(p, params) for p in PROMPTS[1:]]
    engine.step()  # first decodes while three prompts of 9, 1 and 6 tokens join
    assert spy.forwards[0] == [(1, 3)]
    assert spy.forwards[1] == [(1, 1), (1, 9), (1, 1), (1, 6)]
    assert all(len(h.tokens) == 1 for h in joiners)  # each read its prompt, sampled a token
    engine.run()
    assert all(len(f) == 1 for f in spy.forwards[2:])  # then one group of decoding rows
    assert len(spy.forwards) == 1 + 6
    for prompt, handle in zip(PROMPTS, [first, *joiners]):
        assert_as_alone(model, prompt, handle, 6)


@pytest.mark.parametrize("name", ["gpt-learned", "gpt-rotary"])
def test_on_the_cpu_prompts_are_read_alone_and_decoding_waits_one_step_at_most(name, monkeypatch):
    """prefill_first (the CPU's default): a step of more than PREFILL_FIRST_TOKENS prompt
    tokens reads them without the decoding rows, but never two steps in a row; fewer prompt
    tokens join the decoding rows; every token is the one decoding alone gives."""
    model = MODELS[name]()
    engine = Engine(model, slots=4, prefill_chunk=10)
    assert engine.prefill_first and PREFILL_FIRST_TOKENS < 10
    spy = CountForwards(model, monkeypatch)
    running = engine.submit(PROMPTS[2], GREEDY)
    engine.step()
    long = [7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4]
    params = SamplingParams(2, temperature=0, logprobs=0)  # 14 + 2 = 16: nothing slides
    handles = [engine.submit(p, params) for p in (long, PROMPTS[1])]
    decoded = []
    for _ in range(3):
        engine.step()
        decoded.append(len(running.tokens))
    assert spy.forwards[1] == [(1, 10)]  # 10 prompt tokens alone: the running row waits
    assert spy.forwards[2] == [(1, 1), (1, 4), (1, 6)]  # 10 again, but it waited: beside it
    assert spy.forwards[3] == [(2, 1), (1, 3)]  # 3 prompt tokens: beside the decoding rows
    assert decoded == [1, 2, 3]
    engine.run()
    assert_as_alone(model, PROMPTS[2], running, GREEDY.max_new_tokens)
    for prompt, handle in zip((long, PROMPTS[1]), handles):
        assert_as_alone(model, prompt, handle, 2)


@pytest.mark.parametrize("name", ["gpt-learned", "gpt-rotary", "gpt-canon", "lstm"])
def test_a_prompt_longer_than_the_step_budget_reads_on_beside_short_ones(name):
    """prefill_chunk bounds a step's prompt tokens, all joiners together, first come first
    read: a 14-token prompt takes 3 steps of 5 while a stream decodes, the short ones after it
    wait their turn, and every token is the one decoding alone gives."""
    model = MODELS[name]()
    long = [7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4]
    params = SamplingParams(2, temperature=0, logprobs=0)  # 14 + 2 = 16: nothing slides
    engine = Engine(model, slots=4, prefill_chunk=5, prefill_first=False)
    running = engine.submit(PROMPTS[2], GREEDY)
    engine.step()
    handles = [engine.submit(p, params) for p in (long, PROMPTS[0], PROMPTS[3])]
    read, decoded = [], []
    while engine.has_work:
        before = [len(h.pending) for h in handles]
        engine.step()
        read.append(sum(b - len(h.pending) for h, b in zip(handles, before)))
        decoded.append(len(running.tokens))
    assert read[:5] == [5, 5, 5, 5, 3] and sum(read) == 14 + 3 + 6  # 5 a step at most
    assert decoded[:5] == [2, 3, 4, 5, 6]  # the running stream keeps its pace meanwhile
    assert_as_alone(model, PROMPTS[2], running, GREEDY.max_new_tokens)
    for prompt, handle in zip((long, PROMPTS[0], PROMPTS[3]), handles):
        assert_as_alone(model, prompt, handle, 2)


def test_prompt_chunks_beside_decoding_rows_give_the_logits_of_separate_forwards():
    """step_slot_groups (one forward: a span of decoding rows with a gap, then two prompt
    chunks, one of them in the gap) gives each row's last logits as separate step_slots calls
    do, within float tolerance; the caches end the same."""
    model = tiny_gpt("rotary", seed=2)
    with torch.no_grad():
        apart, together = model.init_slots(4, 16), model.init_slots(4, 16)
        for caches in (apart, together):
            model.step_slots(torch.tensor([[1, 2, 3], [4, 5, 6]]), caches, [0, 3], [0, 0])
            model.step_slots(torch.tensor([[9, 9, 9, 9]]), caches, [2], [0])
        decode = (torch.tensor([[7], [0], [0], [8]]), [0, 1, 2, 3], [3, 0, 4, 3])
        chunks = [(torch.tensor([[11, 12, 13, 14, 15]]), [1], [0])]
        chunks.append((torch.tensor([[16, 17]]), [2], [4]))
        got = model.step_slot_groups([decode, *chunks], together)
        want = [model.step_slots(ids, apart, rows, starts)[:, -1] for ids, rows, starts in [decode]]
        want += [model.step_slots(ids, apart, rows, starts)[:, -1] for ids, rows, starts in chunks]
    want = torch.cat(want)
    assert got.shape == (6, model.config.vocab_size)
    torch.testing.assert_close(got[[0, 3, 4, 5]], want[[0, 3, 4, 5]], atol=1e-5, rtol=1e-4)
    for a, b in zip(apart, together):  # the gap's dummy tokens were overwritten by the chunks
        torch.testing.assert_close(a.k[:, :, :6], b.k[:, :, :6], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.v[:, :, :6], b.v[:, :, :6], atol=1e-5, rtol=1e-4)
    full = [[1, 2, 3, 7], [11, 12, 13, 14, 15], [9, 9, 9, 9, 16, 17], [4, 5, 6, 8]]
    reference = torch.stack([model(torch.tensor([p]))[0, -1] for p in full])
    torch.testing.assert_close(got[[0, 4, 5, 3]], reference, atol=1e-5, rtol=1e-4)
