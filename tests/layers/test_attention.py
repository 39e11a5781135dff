"""MultiHeadAttention: the SDPA path against the explicit one, masks, and the KV cache."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.layers.attention import KVCache, MultiHeadAttention


def _pair(**kwargs):
    """The same attention twice: the fast path and the probability-capturing one."""
    fast = MultiHeadAttention(32, 4, **kwargs).eval()
    slow = MultiHeadAttention(32, 4, **kwargs).eval()
    slow.load_state_dict(fast.state_dict())
    slow.capture_probs = True
    return fast, slow


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize("rotary", [False, True])
def test_capture_path_matches_sdpa(is_causal, rotary):
    fast, slow = _pair(is_causal=is_causal, rotary=rotary, max_seq_len=16)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(slow(x), fast(x), atol=1e-5, rtol=0)
    probs = slow.last_probs
    assert probs.shape == (2, 4, 7, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7))
    if is_causal:
        assert probs.triu(diagonal=1).abs().max() == 0


def test_capture_path_matches_sdpa_with_padding():
    fast, slow = _pair()
    x = torch.randn(2, 6, 32)
    mask = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    torch.testing.assert_close(slow(x, mask), fast(x, mask), atol=1e-5, rtol=0)
    assert slow.last_probs[1, :, 2:, :2].abs().max() == 0  # real queries ignore left padding


def test_inner_dim_may_differ_from_embed_dim():
    attn = MultiHeadAttention(256, 2, head_dim=256)  # the Keras GPT block: inner width 512
    assert attn.qkv.weight.shape == (3 * 512, 256) and attn.out.weight.shape == (256, 512)
    assert attn(torch.randn(1, 5, 256)).shape == (1, 5, 256)


def test_future_positions_do_not_change_earlier_outputs():
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[:, -1] = torch.randn(32)
    torch.testing.assert_close(attn(x)[:, :-1], attn(y)[:, :-1])


def test_left_padding_leaves_real_positions_unchanged():
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(1, 5, 32)
    padded = torch.cat([torch.randn(1, 3, 32) * 100, x], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 5])
    out = attn(padded, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 3:], attn(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("capture", [False, True])
def test_cache_prefill_then_steps_equals_full(rotary, capture):
    attn = MultiHeadAttention(32, 4, rotary=rotary, max_seq_len=16).eval()
    attn.capture_probs = capture
    x = torch.randn(2, 9, 32)
    cache = KVCache(16)
    parts = [attn(x[:, :4], cache=cache)]
    parts += [attn(x[:, 4:6], cache=cache)]  # a second multi-token chunk needs the offset mask
    parts += [attn(x[:, t : t + 1], cache=cache) for t in range(6, 9)]
    assert cache.length == 9 and cache.k.shape == (2, 4, 16, 8)
    torch.testing.assert_close(torch.cat(parts, 1), attn(x), atol=1e-5, rtol=0)


def test_cache_writes_in_place_and_refuses_overflow():
    attn = MultiHeadAttention(32, 4).eval()
    cache = KVCache(4)
    attn(torch.randn(1, 3, 32), cache=cache)
    storage = cache.k.data_ptr()
    attn(torch.randn(1, 1, 32), cache=cache)
    assert cache.k.data_ptr() == storage
    with pytest.raises(ConfigError, match="KV cache"):
        attn(torch.randn(1, 1, 32), cache=cache)


def test_heads_must_divide_embed_dim():
    with pytest.raises(ConfigError, match="num_heads"):
        MultiHeadAttention(30, 4)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_kv_heads=2), dict(num_kv_heads=1, sliding_window=3), dict(qk_norm_eps=1e-6)],
)
def test_grouped_windowed_and_normed_attention_capture_matches_sdpa(kwargs):
    fast, slow = _pair(rotary=True, max_seq_len=16, **kwargs)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(slow(x), fast(x), atol=1e-5, rtol=0)
    window = kwargs.get("sliding_window")
    if window:  # a query sees itself and the window - 1 keys before it
        assert slow.last_probs.tril(diagonal=-window).abs().max() == 0
    cache = KVCache(16)
    parts = [fast(x[:, :4], cache=cache)] + [fast(x[:, t : t + 1], cache=cache) for t in (4, 5, 6)]
    assert cache.k.shape[1] == kwargs.get("num_kv_heads", 4)
    torch.testing.assert_close(torch.cat(parts, 1), fast(x), atol=1e-5, rtol=0)


def test_query_heads_must_divide_into_key_value_groups():
    with pytest.raises(ConfigError, match="num_heads=4 do not divide into num_kv_heads=3"):
        MultiHeadAttention(32, 4, num_kv_heads=3)


def test_cache_grows_by_doubling_up_to_max_len():
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(1, 600, 32)
    cache = KVCache(1000)
    parts = [attn(x[:, :200], cache=cache)]
    assert cache.k.shape[-2] == 256  # not 1000 positions for a short sequence
    parts.append(attn(x[:, 200:300], cache=cache))  # past 256: twice as many
    assert cache.k.shape[-2] == 512
    parts.append(attn(x[:, 300:600], cache=cache))  # past 512: at most max_len
    assert cache.k.shape[-2] == 1000 and cache.length == 600
    torch.testing.assert_close(torch.cat(parts, 1), attn(x), atol=1e-5, rtol=0)


def test_grouped_heads_without_enable_gqa_give_the_same_output(monkeypatch):
    from lmforge.layers import attention

    attn = MultiHeadAttention(32, 4, num_kv_heads=2, rotary=True, max_seq_len=16).eval()
    x = torch.randn(2, 7, 32)
    shared = attn(x)
    monkeypatch.setattr(attention, "GQA_IN_SDPA", False)  # torch 2.4: heads repeated first
    torch.testing.assert_close(attn(x), shared, atol=1e-6, rtol=0)


def test_packed_rows_restart_positions_and_never_attend_across_examples():
    from lmforge.layers.attention import document_mask, document_positions

    ids = torch.tensor([[1, 1, 1, 2, 2, 0, 0]])  # two examples, then padding
    assert document_positions(ids).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = document_mask(ids)[0, 0]  # (T, T)
    assert mask[4].tolist() == [False, False, False, True, True, False, False]
    assert mask[2].tolist() == [True, True, True, False, False, False, False]
    assert document_mask(ids, window=2)[0, 0, 2].tolist() == [False, True, True] + [False] * 4
