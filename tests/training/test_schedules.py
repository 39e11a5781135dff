"""Learning-rate schedules: warm-up, decay, and a warm-up cut to fit a short budget."""

import pytest

from lmforge.training.schedules import lr_at


def test_a_long_budget_keeps_the_whole_warmup():
    lrs = [lr_at(s, s / 2000, 1.0, warmup_steps=100, schedule="constant") for s in (0, 49, 99)]
    assert lrs == pytest.approx([0.01, 0.5, 1.0])


def test_a_short_budget_reaches_the_peak_by_a_tenth_of_it():
    # 40 steps with a 100-step warm-up: without the cut the run would end at 40% of its lr
    lrs = [lr_at(s, s / 40, 1.0, warmup_steps=100, schedule="constant") for s in range(40)]
    assert lrs[:4] == pytest.approx([0.01, 0.25, 0.5, 0.75])
    assert lrs[4:] == [1.0] * 36
    # a time budget: warm-up is over once a tenth of the time is spent, whatever the step
    assert lr_at(30, 0.1, 1.0, warmup_steps=100, schedule="constant") == 1.0
    assert lr_at(30, 0.05, 1.0, warmup_steps=100, schedule="constant") == pytest.approx(0.5)
