"""Token + position embeddings and the rotary embedding."""

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.layers.embeddings import RotaryEmbedding, TokenPositionEmbedding, sinusoidal_table


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "none"])
def test_offset_equals_a_slice_of_the_full_sequence(position):
    embed = TokenPositionEmbedding(20, 8, 10, position)
    ids = torch.randint(0, 20, (2, 6))
    torch.testing.assert_close(embed(ids[:, 4:], start=4), embed(ids)[:, 4:])


def test_sinusoidal_table_values():
    table = sinusoidal_table(5, 6)
    assert table[3, 0] == pytest.approx(math.sin(3.0))
    assert table[3, 1] == pytest.approx(math.cos(3.0))
    assert table[2, 4] == pytest.approx(math.sin(2 / 10000 ** (4 / 6)))
    assert sinusoidal_table(4, 5).shape == (4, 5)  # odd widths work


def test_only_learned_positions_are_parameters():
    assert "position.weight" in dict(TokenPositionEmbedding(20, 8, 10).named_parameters())
    sinusoidal = TokenPositionEmbedding(20, 8, 10, "sinusoidal")
    assert list(sinusoidal.state_dict()) == ["token.weight"]


def test_unknown_position_is_a_config_error():
    with pytest.raises(ConfigError, match="position='alibi'"):
        TokenPositionEmbedding(20, 8, 10, "alibi")


def test_rotary_keeps_norms_and_depends_on_relative_position_only():
    rope = RotaryEmbedding(8, 32)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    torch.testing.assert_close(rope(q, 5).norm(), q.norm())
    score = lambda i, j: (rope(q, i) * rope(k, j)).sum()  # noqa: E731
    torch.testing.assert_close(score(7, 3), score(14, 10))


def test_unknown_rope_scaling_is_a_config_error():
    with pytest.raises(ConfigError, match="rope scaling 'yarn' is unknown; lmforge knows none"):
        RotaryEmbedding(8, 32, scaling={"scaling": "yarn"})
