"""MaskedLMMaskGenerator and MaskedLMExamples: which tokens are chosen, how they are corrupted."""

import numpy as np
import pytest

from lmforge.data.masking import MaskedLMExamples, MaskedLMMaskGenerator
from lmforge.errors import ConfigError
from lmforge.tokenizers.packing import PackedExamples, StartEndPacker

CLS, SEP, PAD, MASK = 1, 2, 0, 3


def _rows(n=200, T=40, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, T - 2, n)
    return StartEndPacker(T, CLS, SEP, PAD)([rng.integers(10, 100, k) for k in lengths])


def _generator(rate=0.25, P=8, **kw):
    return MaskedLMMaskGenerator(100, rate, MASK, P, unselectable_token_ids=(CLS, SEP, PAD), **kw)


def test_selection_counts_positions_and_targets():
    packed = _rows()
    ids = packed["token_ids"]
    out = _generator()(ids, np.random.default_rng(0))
    num_selectable = packed["padding_mask"].sum(1) - 2
    expected = np.minimum(np.maximum(np.rint(num_selectable * 0.25), 1), 8)
    assert out["mask_weights"].sum(1).tolist() == expected.tolist()
    rows = np.arange(len(ids))[:, None]
    chosen = out["mask_weights"] > 0
    assert (out["mask_ids"][chosen] == ids[rows, out["mask_positions"]][chosen]).all()
    # never [CLS], [SEP] or [PAD]; chosen positions are distinct and ascending
    assert not np.isin(ids[rows, out["mask_positions"]][chosen], (CLS, SEP, PAD)).any()
    for r in range(len(ids)):
        pos = out["mask_positions"][r][chosen[r]]
        assert (np.diff(pos) > 0).all()
    assert (out["mask_positions"][~chosen] == 0).all() and (out["mask_ids"][~chosen] == 0).all()
    # unselected tokens are untouched
    changed = out["token_ids"] != ids
    selected = np.zeros_like(changed)
    np.put_along_axis(selected, out["mask_positions"], chosen, axis=1)
    assert not (changed & ~selected).any()


def test_mask_random_keep_rates_are_80_10_10():
    ids = np.full((4000, 20), 50)
    out = MaskedLMMaskGenerator(100, 0.5, MASK, 10, unselectable_token_ids=(PAD,))(
        ids, np.random.default_rng(1)
    )
    rows = np.arange(len(ids))[:, None]
    new = out["token_ids"][rows, out["mask_positions"]][out["mask_weights"] > 0]
    assert abs((new == MASK).mean() - 0.8) < 0.02
    assert abs(((new != MASK) & (new != 50)).mean() - 0.1 * 0.99) < 0.02  # 1 in 99 draws is 50
    assert not np.isin(new, (PAD,)).any()  # random replacements are never special


def test_same_rng_same_masks():
    ids = _rows()["token_ids"]
    a = _generator()(ids, np.random.default_rng(7))
    b = _generator()(ids, np.random.default_rng(7))
    assert all((a[k] == b[k]).all() for k in a)


def test_generator_rejects_bad_rates():
    with pytest.raises(ConfigError):
        _generator(rate=0.0)
    with pytest.raises(ConfigError):
        _generator(mask_token_rate=0.95, random_token_rate=0.1)
    with pytest.raises(ConfigError):
        MaskedLMMaskGenerator(10, 0.2, 12, 4)


def test_masked_lm_examples_are_deterministic_per_batch_and_label_padding_slots():
    examples = MaskedLMExamples(PackedExamples(_rows()), _generator(P=16))
    a, b = examples.get([3, 5, 8]), examples.get([3, 5, 8])
    assert set(a) == {"token_ids", "padding_mask", "mask_positions", "labels"}
    assert all((a[k] == b[k]).all() for k in a)
    other = examples.get([3, 5, 9])["token_ids"][:2, : a["token_ids"].shape[1]]
    assert not (other == a["token_ids"][:2]).all()  # another batch, other masks
    assert (a["labels"] == -100).any() and (a["labels"] >= 10).any()
    assert examples.length == 40
