"""TransformerBlock and FeedForward: norm placement, activations, causality."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.layers.transformer import FeedForward, TransformerBlock


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_feed_forward_applies_its_activation(activation):
    ffn = FeedForward(8, 16, activation)
    x = torch.randn(2, 3, 8)
    act = {
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    }[activation]
    torch.testing.assert_close(ffn(x), ffn.down(act(ffn.up(x))))


def test_unknown_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="activation='swish'"):
        FeedForward(8, 16, "swish")


def test_post_norm_block_ends_normalised():
    block = TransformerBlock(16, 2, 32, norm_first=False)
    out = block(torch.randn(3, 5, 16) * 10)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-3, rtol=0)


def test_pre_norm_block_keeps_the_residual_stream():
    block = TransformerBlock(16, 2, 32, norm_first=True)
    for p in [
        block.attn.out.weight,
        block.attn.out.bias,
        block.ffn.down.weight,
        block.ffn.down.bias,
    ]:
        torch.nn.init.zeros_(p)
    x = torch.randn(3, 5, 16) * 10
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("is_causal", [True, False])
def test_causal_block_never_sees_the_future(is_causal):
    block = TransformerBlock(16, 2, 32, is_causal=is_causal).eval()
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, -1] = torch.randn(16)  # not a constant shift, which LayerNorm would remove
    same = torch.allclose(block(x)[:, :-1], block(y)[:, :-1])
    assert same == is_causal


def test_no_bias_means_no_bias_anywhere():
    block = TransformerBlock(16, 2, 32, use_bias=False)
    assert not [n for n, _ in block.named_parameters() if n.endswith("bias")]
