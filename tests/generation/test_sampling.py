"""Sampling functions on logits (B, V): filters, penalties, greedy and seeded draws."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.sampling import (
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    apply_temperature,
    draw,
    min_p_filter,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
LOGITS = PROBS.log()


def kept(logits):
    return torch.isfinite(logits)[0].nonzero().flatten().tolist()


def test_temperature_scales_logits():
    torch.testing.assert_close(apply_temperature(LOGITS, 0.5), LOGITS * 2)
    assert apply_temperature(LOGITS, 1.0) is LOGITS


@pytest.mark.parametrize("k, expected", [(1, [1]), (2, [1, 3]), (3, [1, 2, 3]), (9, [0, 1, 2, 3])])
def test_top_k_keeps_k(k, expected):
    assert kept(top_k_filter(LOGITS, k)) == expected


@pytest.mark.parametrize(
    "p, expected", [(0.4, [1]), (0.75, [1, 3]), (0.85, [1, 2, 3]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(top_p_filter(LOGITS, p)) == expected


def test_top_p_works_row_by_row():
    logits = torch.cat([LOGITS, LOGITS.flip(-1)])
    out = top_p_filter(logits, 0.75)
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, False, True, False]]


@pytest.mark.parametrize(
    "min_p, expected", [(0.0, [0, 1, 2, 3]), (0.25, [1, 2, 3]), (0.5, [1, 3]), (1.0, [1])]
)
def test_min_p_keeps_tokens_near_the_best(min_p, expected):
    assert kept(min_p_filter(LOGITS, min_p)) == expected


def test_filters_do_not_modify_their_input():
    logits = LOGITS.clone()
    top_k_filter(logits, 1), top_p_filter(logits, 0.5), min_p_filter(logits, 0.5)
    apply_repetition_penalty(logits, torch.tensor([[1]]), 2.0)
    torch.testing.assert_close(logits, LOGITS)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 0]]), 2.0)  # repeats count once
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))
    assert apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits


def test_greedy_is_argmax_and_ignores_filters():
    logits = torch.randn(4, 30)
    ids = sample_next_token(logits, temperature=0, top_k=3, top_p=0.1)
    assert ids.tolist() == logits.argmax(-1).tolist()


def test_top_k_1_samples_the_argmax():
    logits = torch.randn(4, 30)
    assert sample_next_token(logits, top_k=1).tolist() == logits.argmax(-1).tolist()


def test_draws_follow_the_distribution_and_a_seed_repeats_them():
    logits = torch.tensor([[0.7, 0.3]]).log().expand(4000, 2)
    draws = sample_next_token(logits, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4000,) and draws.dtype == torch.long
    assert draws.float().mean().item() == pytest.approx(0.3, abs=0.03)
    again = sample_next_token(logits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_draw_matches_the_probabilities_and_never_picks_a_zero():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.3, 0.0])
    ids = draw(probs.expand(20_000, 6), torch.Generator().manual_seed(1))
    counts = torch.bincount(ids, minlength=6).float() / 20_000
    assert counts[[1, 3, 5]].sum() == 0  # zero-probability ids, the last one included
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)
    # a row whose mass sits at its very end, and unnormalised rows, stay in range
    edge = torch.tensor([[0.0, 0.0, 1e-30], [2.0, 0.0, 0.0]])
    for seed in range(50):
        assert draw(edge, torch.Generator().manual_seed(seed)).tolist() == [2, 0]


def test_bf16_logits_are_sampled_in_float32():
    logits = torch.randn(3, 20).bfloat16()
    assert sample_next_token(logits, top_p=0.9).shape == (3,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(min_p=2.0), "min_p=2.0"),
    ],
)
def test_out_of_range_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sample_next_token(LOGITS, **kwargs)


def test_bad_penalty_is_a_config_error():
    with pytest.raises(ConfigError, match="repetition_penalty=0"):
        apply_repetition_penalty(LOGITS, torch.tensor([[0]]), 0)


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    generated = torch.tensor([[1, 1, 1, 3], [0, 2, 2, 2]])  # row 0: token 1 thrice, 3 once
    out = apply_presence_frequency_penalty(logits, generated, presence=0.5, frequency=0.25)
    expected = torch.tensor([[1.0, 2.0 - 0.5 - 0.75, 3.0, 4.0 - 0.5 - 0.25],
                             [-0.75, 0.0, -0.5 - 0.75, 0.0]])  # fmt: skip
    assert torch.allclose(out, expected)
    assert torch.equal(logits[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # input untouched
    negative = apply_presence_frequency_penalty(logits[:1], generated[:1], -1.0, 0.0)
    assert torch.allclose(negative, torch.tensor([[1.0, 3.0, 3.0, 5.0]]))  # < 0 favours repeats
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert torch.equal(apply_presence_frequency_penalty(logits, empty, 2.0, 2.0), logits)


@pytest.mark.parametrize("presence, frequency", [(2.5, 0.0), (0.0, -2.1)])
def test_presence_frequency_out_of_range_is_a_config_error(presence, frequency):
    with pytest.raises(ConfigError, match="must be between -2 and 2"):
        apply_presence_frequency_penalty(LOGITS, torch.tensor([[0]]), presence, frequency)
