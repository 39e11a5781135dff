"""capture_attention: one (B, H, T, S) map per layer, proper distributions, causal zeros, and a
model whose outputs do not change while it is watched (GPT, and a BERT-style encoder stack)."""

import pytest
import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.inspect.attention import attention_modules, average_heads, capture_attention
from lmforge.layers.attention import MultiHeadAttention
from lmforge.layers.transformer import TransformerBlock
from lmforge.models.gpt import GPTCausalLM, GPTConfig

TINY = dict(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=3, ffn_dim=64)


def tiny_gpt(**overrides) -> GPTCausalLM:
    return GPTCausalLM(GPTConfig(**{**TINY, **overrides})).eval()


class TinyEncoder(nn.Module):
    """A BERT-shaped stack: bidirectional blocks over embedded ids, with a padding mask."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.blocks = nn.ModuleList(TransformerBlock(32, 4, 64, is_causal=False) for _ in range(2))

    def forward(self, token_ids, padding_mask=None):
        x = self.embed(token_ids)
        for block in self.blocks:
            x = block(x, padding_mask)
        return x


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_one_causal_distribution_map_per_layer(position, norm_first):
    model = tiny_gpt(position=position, norm_first=norm_first)
    ids = torch.randint(0, 50, (2, 7))
    with capture_attention(model) as maps:
        model(ids)
    assert len(maps) == 3
    for layer_map in maps:
        assert layer_map.shape == (2, 2, 7, 7) and layer_map.dtype == torch.float32
        torch.testing.assert_close(layer_map.sum(-1), torch.ones(2, 2, 7))
        assert layer_map.triu(diagonal=1).abs().max() == 0  # exactly 0 above the diagonal
        assert (layer_map >= 0).all()
        assert layer_map[:, :, 0, 0].eq(1).all()  # the first token can only look at itself


@pytest.mark.parametrize("norm_first", [True, False])
def test_logits_are_identical_inside_and_outside_the_context(norm_first):
    model = tiny_gpt(norm_first=norm_first)
    ids = torch.randint(0, 50, (2, 9))
    fast = model(ids)
    with capture_attention(model) as maps:
        watched = model(ids)
    # SDPA still makes the outputs; fp32 tolerance, as kernels may round a sum differently per call
    torch.testing.assert_close(watched, fast, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(ids), fast, rtol=1e-5, atol=1e-6)
    assert len(maps) == 3


def test_the_context_leaves_the_model_as_it_found_it():
    model = tiny_gpt()
    with capture_attention(model):
        model(torch.randint(0, 50, (1, 5)))
    for attn in attention_modules(model):
        assert attn.capture_probs is False and attn.last_probs is None
        assert not attn._forward_hooks


def test_captured_probabilities_are_the_ones_the_layer_uses():
    attn = MultiHeadAttention(32, 4, is_causal=False).eval()
    x = torch.randn(2, 6, 32)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with capture_attention(attn) as maps:
        y = attn(x, mask)
    probs = maps[0]  # (B, H, T, S)
    v = attn.qkv(x).view(2, 6, 3, 4, 8)[:, :, 2].transpose(1, 2)  # (B, H, T, D)
    rebuilt = attn.out((probs @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(rebuilt, y, atol=1e-5, rtol=0)
    assert probs[1, :, :4, 4:].abs().max() == 0  # real queries give padding exactly nothing


def test_works_for_a_bidirectional_encoder_with_padding():
    model = TinyEncoder().eval()
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    fast = model(ids, mask)
    with capture_attention(model) as maps:
        torch.testing.assert_close(model(ids, mask), fast, rtol=1e-5, atol=1e-6)
    assert [m.shape for m in maps] == [(2, 4, 6, 6)] * 2
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 4, 6))
    assert maps[0][0].triu(diagonal=1).abs().max() > 0  # not causal: later tokens are seen
    assert maps[0][1, :, :3, 3:].abs().max() == 0


def test_each_pass_replaces_the_previous_maps():
    model = tiny_gpt()
    with capture_attention(model) as maps:
        model(torch.randint(0, 50, (1, 8)))
        model(torch.randint(0, 50, (2, 3)))
    assert [m.shape for m in maps] == [(2, 2, 3, 3)] * 3


def test_cached_decoding_captures_the_new_rows_over_all_keys():
    model = tiny_gpt()
    ids = torch.randint(0, 50, (1, 6))
    with capture_attention(model) as maps:
        model(ids)
        full = [m.clone() for m in maps]
        state = model.init_state(1)
        _, state = model.step(ids[:, :5], state)
        model.step(ids[:, 5:], state)
    for step_map, full_map in zip(maps, full):
        assert step_map.shape == (1, 2, 1, 6)  # (B, H, T, S): one new query over six keys
        torch.testing.assert_close(step_map[:, :, 0], full_map[:, :, -1], atol=1e-6, rtol=0)


def test_average_heads_is_still_a_distribution():
    model = tiny_gpt()
    with capture_attention(model) as maps:
        model(torch.randint(0, 50, (1, 5)))
    avg = average_heads(maps[0])
    assert avg.shape == (1, 5, 5)
    torch.testing.assert_close(avg.sum(-1), torch.ones(1, 5))


def test_a_model_without_attention_is_a_clear_error():
    with pytest.raises(ConfigError, match="no MultiHeadAttention"):
        with capture_attention(nn.Linear(3, 3)):
            pass
