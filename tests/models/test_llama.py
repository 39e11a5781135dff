"""Llama-style decoders: causality, KV-cache and engine decoding, grouped-query caches, the
sliding window, rotary scaling against transformers' rules, config checks and presets."""

import dataclasses

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.engine import Engine, SamplingParams
from lmforge.layers.embeddings import rotary_inv_freq
from lmforge.models.llama import PRESETS, LlamaBackbone, LlamaCausalLM, LlamaConfig

TINY = dict(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2)
VARIANTS = {
    "gqa": {},
    "mha-untied": dict(num_kv_heads=4, tie_embeddings=False),
    "qwen2-bias": dict(qkv_bias=True),
    "qwen3-qk-norm": dict(qk_norm=True, head_dim=16),
    "mistral-window": dict(sliding_window=4),
    "llama3-rope": dict(rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=8),
}


def tiny_llama(**overrides) -> LlamaCausalLM:
    return LlamaCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def ids():
    return torch.randint(0, 50, (2, 12))


def test_shapes_and_backbone(ids):
    model = tiny_llama()
    assert model(ids).shape == (2, 12, 50)
    assert LlamaBackbone(model.config)(ids).shape == (2, 12, 32)
    assert model.family == model.backbone.family == "llama"
    # one rotary table serves every block
    assert model.backbone.blocks[0].attn.rotary is model.backbone.blocks[1].attn.rotary


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_future_tokens_do_not_change_earlier_logits(ids, variant):
    model = tiny_llama(**VARIANTS[variant])
    other = ids.clone()
    other[:, -1] = (ids[:, -1] + 1) % 50
    torch.testing.assert_close(model(ids)[:, :-1], model(other)[:, :-1])


def test_sliding_window_hides_tokens_further_back():
    model = tiny_llama(sliding_window=4, num_layers=1)
    ids = torch.randint(0, 50, (1, 10))
    other = ids.clone()
    other[:, 0] = (ids[:, 0] + 1) % 50
    # one layer: position 4 and later see positions 1.. only, so token 0 cannot reach them
    torch.testing.assert_close(model(ids)[:, 4:], model(other)[:, 4:])
    assert not torch.allclose(model(ids)[:, 3], model(other)[:, 3])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_steps_equal_the_full_forward(ids, variant):
    model = tiny_llama(**VARIANTS[variant])
    state = model.init_state(2)
    logits, state = model.step(ids[:, :5], state)  # prefill
    parts = [logits]
    for t in range(5, 12):
        logits, state = model.step(ids[:, t : t + 1], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), model(ids), atol=1e-5, rtol=0)
    assert state.caches[0].k.shape[1] == model.config.num_kv_heads  # cached at key/value size


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_engine_rows_equal_the_full_forward(variant):
    model = tiny_llama(**VARIANTS[variant])
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaky logits: greedy has no near-ties
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    engine = Engine(model, slots=3, prefill_chunk=4)
    handles = [engine.submit(p, SamplingParams(max_new_tokens=8, temperature=0)) for p in prompts]
    engine.run()
    D = model.backbone.blocks[0].attn.head_dim
    assert engine.state[0].k.shape == (3, model.config.num_kv_heads, 16, D)  # (slots, KV, L, D)
    for prompt, handle in zip(prompts, handles):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                seq.append(int(model(torch.tensor([seq[-16:]]))[0, -1].argmax()))
        assert handle.tokens == seq[len(prompt) :]


def test_left_padding_leaves_real_tokens_unchanged():
    model = tiny_llama(sliding_window=5)
    real = torch.randint(0, 50, (1, 6))
    padded = torch.cat([torch.full((1, 3), 7), real], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    torch.testing.assert_close(model(padded, mask)[:, 3:], model(real), atol=1e-5, rtol=0)


def test_step_and_forward_refuse_to_pass_max_seq_len():
    model = tiny_llama()
    state = model.init_state(1)
    _, state = model.step(torch.zeros(1, 16, dtype=torch.long), state)
    with pytest.raises(ConfigError, match="init_state"):
        model.step(torch.zeros(1, 1, dtype=torch.long), state)
    with pytest.raises(ConfigError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_falls_over_30_adamw_steps():
    model = tiny_llama(num_layers=1).train()
    seq = torch.arange(13).repeat(2, 1) % 7
    batch = {"token_ids": seq[:, :-1], "labels": seq[:, 1:]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(batch).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert model.loss(batch).item() < 0.5 * first


def test_tied_and_untied_heads_and_grouped_sizes():
    tied = tiny_llama()
    assert tied.head.weight is tied.backbone.embed.weight and tied.head.bias is None
    untied = tiny_llama(tie_embeddings=False)
    assert untied.num_params() == tied.num_params() + 50 * 32
    attn = tied.backbone.blocks[0].attn  # q: 4 heads of 8, k and v: 2 heads of 8
    assert attn.qkv.weight.shape == (32 + 16 + 16, 32) and attn.qkv.bias is None
    assert tiny_llama(qkv_bias=True).backbone.blocks[0].attn.qkv.bias.shape == (64,)
    assert tiny_llama(qkv_bias=True).backbone.blocks[0].attn.out.bias is None


@pytest.mark.parametrize(
    "scaling",
    [
        dict(rope_type="linear", factor=4.0),
        dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ],
)
def test_rotary_scaling_matches_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        rope_parameters={"rope_theta": 500000.0, **scaling},
    )
    theirs, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    ours = rotary_inv_freq(
        64,
        500000.0,
        scaling["rope_type"],
        scaling["factor"],
        scaling.get("low_freq_factor", 1.0),
        scaling.get("high_freq_factor", 4.0),
        scaling.get("original_max_position_embeddings", 8192),
    )
    torch.testing.assert_close(ours, theirs.float(), atol=0, rtol=1e-6)
    assert not torch.allclose(ours, rotary_inv_freq(64, 500000.0))  # the rule changed something


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=4, num_kv_heads=3), "num_heads=4 do not divide into num_kv_heads=3"),
        (dict(rope_scaling="yarn"), "rope_scaling='yarn' is unknown; use one of none"),
        (dict(embed_dim=30), "not divisible by num_heads"),
        (dict(head_dim=6, num_heads=4), None),  # fine: head_dim lifts the rule
        (dict(head_dim=7), "even head_dim"),
        (dict(num_kv_heads=0), "num_kv_heads=0"),
        (dict(sliding_window=0), "sliding_window=0"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(rope_scaling="llama3", rope_high_freq_factor=1.0), "rope_high_freq_factor"),
        (dict(dropout=1.0), "dropout=1.0"),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    if message is None:
        LlamaConfig(**{**TINY, **overrides})
        return
    with pytest.raises(ConfigError, match=message) as err:
        LlamaConfig(**{**TINY, **overrides})
    assert "\n" not in str(err.value)


def test_config_round_trips_through_a_dict():
    config = LlamaConfig(**PRESETS["qwen3-0.6b"]["config"])
    assert LlamaConfig(**dataclasses.asdict(config)) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_complete(name):
    preset = PRESETS[name]
    assert isinstance(preset["about"], str) and "\n" not in preset["about"]
    assert {"batch_size", "block_size", "lr", "warmup_steps", "weight_decay", "dropout"} <= set(
        preset["train"]
    )
    LlamaConfig(**preset["config"])


def test_shakespeare_preset_matches_the_gpt_one_in_size():
    from lmforge.models.gpt import PRESETS as GPT_PRESETS
    from lmforge.models.gpt import GPTCausalLM, GPTConfig

    llama = LlamaCausalLM(LlamaConfig(**PRESETS["llama-shakespeare"]["config"]))
    gpt = GPTCausalLM(GPTConfig(**GPT_PRESETS["gpt-shakespeare"]["config"]))
    assert abs(llama.num_params() - gpt.num_params()) < 0.05 * gpt.num_params()
    ids = torch.randint(0, 65, (1, 128))
    assert llama(ids).shape == (1, 128, 65)


def test_int8_weights_decode_like_float_ones():
    from lmforge.generation.generate import generate
    from lmforge.layers.quant import quantize_

    model = tiny_llama()
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaky logits: int8 rounding keeps the argmax
    expected = [int(t) for t in generate(model, [1, 2, 3], 6, temperature=0)]
    quantize_(model, "int8")
    assert model.init_slots(1, 8)[0].k.dtype == torch.float32
    assert [int(t) for t in generate(model, [1, 2, 3], 6, temperature=0)] == expected


def test_generate_sizes_the_cache_for_the_tokens_it_will_see(monkeypatch):
    from lmforge.generation.generate import generate
    from lmforge.layers.attention import SlotKVCache

    seen = []
    monkeypatch.setattr(SlotKVCache, "__init__", _spy(SlotKVCache.__init__, seen))
    model = tiny_llama(max_seq_len=32768)  # Qwen's context: a full cache would be 32k long
    assert len(list(generate(model, [[1, 2, 3], [4, 5]], 5, temperature=0, left_pad=True))) == 5
    assert seen == [8, 8]  # one cache per layer, 3 prompt + 5 new positions each


def _spy(init, seen):
    def wrapped(self, slots, heads, max_len, head_dim, dtype, device):
        seen.append(max_len)
        init(self, slots, heads, max_len, head_dim, dtype, device)

    return wrapped
