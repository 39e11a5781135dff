"""Canon layers: a causal depthwise convolution with a residual, equal to torch's conv1d; it
never reads the future, another packed example or a pad, and a GPT with them decodes from its
KV cache as it reads whole."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.layers.canon import Canon
from lmforge.layers.transformer import TransformerBlock
from lmforge.models.gpt import GPTCausalLM, GPTConfig


def canon(dim=8, width=4, seed=0) -> Canon:
    torch.manual_seed(seed)
    layer = Canon(dim, width)
    with torch.no_grad():
        layer.weight.normal_(std=0.5)  # zero at first: a new layer is the identity
    return layer


def canon_gpt(**overrides) -> GPTCausalLM:
    torch.manual_seed(0)
    config = dict(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)
    model = GPTCausalLM(GPTConfig(**{**config, "ffn_dim": 64, "canon": 4, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "canon" in name:
                p.normal_(std=0.3)
    return model


@pytest.mark.parametrize("width", [2, 4])
def test_canon_is_a_causal_depthwise_conv1d_plus_its_input(width):
    layer = canon(width=width)
    h = torch.randn(3, 10, 8)
    conv = F.conv1d(
        F.pad(h.transpose(1, 2), (width - 1, 0)), layer.weight.t()[:, None, :], groups=8
    ).transpose(1, 2)
    torch.testing.assert_close(layer(h), h + conv, atol=1e-6, rtol=0)
    torch.testing.assert_close(Canon(8, width)(h), h)  # zero weights: identity


def test_canon_never_reads_the_future_another_example_or_a_pad():
    layer = canon()
    a, b = torch.randn(1, 5, 8), torch.randn(1, 7, 8)
    packed = layer(torch.cat([a, b], 1), document_ids=torch.tensor([[0] * 5 + [1] * 7]))
    torch.testing.assert_close(packed, torch.cat([layer(a), layer(b)], 1), atol=1e-6, rtol=0)
    pads = torch.randn(1, 3, 8) * 100
    mask = torch.tensor([[False] * 3 + [True] * 7])
    torch.testing.assert_close(layer(torch.cat([pads, b], 1), mask)[:, 3:], layer(b))
    later = b.clone()
    later[:, 4:] += 1
    torch.testing.assert_close(layer(later)[:, :4], layer(b)[:, :4])


def test_a_gpt_with_canon_layers_decodes_from_its_cache_as_it_reads_whole():
    model = canon_gpt(position="rotary")
    ids = torch.randint(0, 50, (2, 12))
    state = model.init_state(2)
    logits, state = model.step(ids[:, :5], state)
    parts = [logits]
    for t in range(5, 12):
        logits, state = model.step(ids[:, t : t + 1], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), model(ids), atol=1e-5, rtol=0)
    without = model(ids)
    for block in model.backbone.blocks:
        block.ffn_canon.weight.data.zero_()
    assert not torch.allclose(model(ids), without)  # the layers were in use


def test_left_padded_rows_of_a_canon_gpt_score_as_they_do_alone():
    model = canon_gpt(position="rotary")
    real = torch.randint(0, 50, (1, 6))
    padded = torch.cat([torch.full((1, 3), 7), real], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    torch.testing.assert_close(model(padded, mask)[:, 3:], model(real), atol=1e-5, rtol=0)
    state = model.init_state(1)  # and through the cache, the pads read first
    logits, state = model.step(padded[:, :5], state, mask[:, :5])
    last, _ = model.step(padded[:, 5:], state, mask[:, 5:])
    torch.testing.assert_close(last, model(real)[:, 2:], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(canon=1), "canon=1"),
        (dict(canon=-2), "canon=-2"),
        (dict(norm_first=False), "pre-norm"),
    ],
)
def test_canon_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        canon_gpt(**overrides)
    if "norm_first" in overrides:
        with pytest.raises(ConfigError, match="pre-norm"):
            TransformerBlock(8, 2, 16, norm_first=False, canon=4)
