"""Dropout: the hashed mask's statistics, and which path runs where."""

import shutil

import pytest
import torch
import torch.nn as nn

from lmforge.layers import dropout as dropout_module
from lmforge.layers.dropout import Dropout, hashed_dropout, hashed_keep

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def test_the_hashed_mask_keeps_one_minus_p_and_changes_with_the_seed():
    n = 1 << 20
    first = hashed_keep((n,), 0.1, torch.tensor(12345))
    assert first.dtype == torch.int64 and set(first.unique().tolist()) == {0, 1}
    assert abs(first.float().mean().item() - 0.9) < 0.003  # ~10 standard deviations
    again = hashed_keep((n,), 0.1, torch.tensor(12345))
    assert torch.equal(first, again)  # a pure function of the seed and the index
    other = hashed_keep((n,), 0.1, torch.tensor(12346)).float()
    # independent masks: dropped together p^2 of the time, neighbours uncorrelated
    both_dropped = ((1 - first.float()) * (1 - other)).mean().item()
    assert abs(both_dropped - 0.01) < 0.002
    neighbours = torch.corrcoef(torch.stack([first[:-1].float(), first[1:].float()]))[0, 1]
    assert abs(neighbours.item()) < 0.01
    assert hashed_keep((4, 8), 0.5, torch.tensor(3)).shape == (4, 8)


def test_hashed_dropout_zeroes_or_scales_each_element():
    x = torch.rand(64, 128) + 1.0  # no zeros of its own
    y = hashed_dropout(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    assert not torch.equal(kept, hashed_dropout(x, 0.25) != 0)  # a fresh seed each call


def test_eager_dropout_is_torchs_own():
    x = torch.randn(8, 32)
    torch.manual_seed(7)
    ours = Dropout(0.2)(x)
    torch.manual_seed(7)
    torch.testing.assert_close(ours, nn.Dropout(0.2)(x), rtol=0, atol=0)
    assert torch.equal(Dropout(0.2).eval()(x), x)
    assert isinstance(Dropout(0.1), nn.Dropout)  # what PEFT export and the tests look for


@needs_compiler
def test_compiled_training_takes_the_hashed_mask_and_its_gradient(monkeypatch):
    traced = []

    def spy(x, p):
        traced.append(p)
        return hashed_dropout(x, p)

    monkeypatch.setattr(dropout_module, "hashed_dropout", spy)
    torch._dynamo.reset()
    drop = Dropout(0.3)
    x = (torch.rand(32, 64) + 1.0).requires_grad_()
    y = torch.compile(drop)(x)
    assert traced == [0.3]
    kept = y.detach() != 0
    torch.testing.assert_close(y.detach()[kept], x.detach()[kept] / 0.7)
    assert 0.6 < kept.float().mean().item() < 0.8
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)  # the same mask in the backward
    torch._dynamo.reset()
