"""LMHead: own weight or tied to the token embedding."""

import torch
import torch.nn as nn

from lmforge.layers.heads import LMHead


def test_tied_head_shares_the_embedding_weight():
    embed = nn.Embedding(11, 4)
    head = LMHead(4, 11, tied_to=embed)
    assert head.weight is embed.weight and head.is_tied
    hidden = torch.randn(2, 3, 4)
    torch.testing.assert_close(head(hidden), hidden @ embed.weight.T)


def test_untied_head_has_its_own_weight_and_optional_bias():
    head = LMHead(4, 11, use_bias=True)
    assert head.weight.shape == (11, 4) and head.bias.shape == (11,) and not head.is_tied
    assert head(torch.randn(2, 3, 4)).shape == (2, 3, 11)


def test_untie_gives_a_tied_head_its_own_copy():
    embed = nn.Embedding(11, 4)
    head = LMHead(4, 11, tied_to=embed)
    hidden = torch.randn(2, 3, 4)
    before, embedding = head(hidden), embed.weight.detach().clone()
    head.untie()
    assert not head.is_tied and head.weight is not embed.weight
    torch.testing.assert_close(head(hidden), before)  # the same function
    with torch.no_grad():
        head.weight.add_(1.0)
    torch.testing.assert_close(head(hidden), before + hidden.sum(-1, keepdim=True))
    assert torch.equal(embed.weight, embedding)  # the embedding did not move
