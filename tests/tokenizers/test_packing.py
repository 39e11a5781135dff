"""Packers: start/end/pad packing, multi-segment truncation, segment ids, padding masks."""

import numpy as np
import pytest

from lmforge.errors import ConfigError
from lmforge.tokenizers.packing import (
    MultiSegmentPacker,
    PackedExamples,
    StartEndPacker,
    trim_lengths,
)


def test_start_end_packer_adds_specials_pads_and_masks():
    out = StartEndPacker(8, start_value=2, end_value=3, pad_value=0)([[10, 11, 12], [7]])
    assert out["token_ids"].tolist() == [[2, 10, 11, 12, 3, 0, 0, 0], [2, 7, 3, 0, 0, 0, 0, 0]]
    assert out["padding_mask"].sum(axis=1).tolist() == [5, 3]
    assert out["padding_mask"].dtype == bool


def test_start_end_packer_truncates_content_keeps_end_token_and_counts_rows():
    packer = StartEndPacker(5, start_value=1, end_value=9)
    out = packer([np.arange(10, 20), [4, 5]])
    assert out["token_ids"][0].tolist() == [1, 10, 11, 12, 9]
    assert packer.num_truncated == 1
    packer([np.arange(30)])
    assert packer.num_truncated == 2


def test_start_end_packer_without_specials_and_single_sequence():
    out = StartEndPacker(4, pad_value=-1)([5, 6])
    assert out["token_ids"].tolist() == [[5, 6, -1, -1]]


def test_start_end_packer_needs_room_for_text():
    with pytest.raises(ConfigError, match="no room"):
        StartEndPacker(2, start_value=1, end_value=2)


def test_multi_segment_packer_segment_ids_follow_bert():
    out = MultiSegmentPacker(10, start_value=1, end_value=2, pad_value=0)([[5, 6, 7]], [[8, 9]])
    assert out["token_ids"].tolist() == [[1, 5, 6, 7, 2, 8, 9, 2, 0, 0]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 0, 0]]
    assert out["padding_mask"].tolist() == [[True] * 8 + [False] * 2]


@pytest.mark.parametrize(
    "lengths, budget, truncate, expected",
    [
        ([10, 3], 8, "round_robin", [5, 3]),
        ([10, 10], 7, "round_robin", [4, 3]),  # the odd token goes to the first segment
        ([2, 9, 9], 10, "round_robin", [2, 4, 4]),
        ([10, 3], 8, "waterfall", [8, 0]),
        ([3, 10], 8, "waterfall", [3, 5]),
        ([3, 4], 8, "round_robin", [3, 4]),  # fits: nothing cut
    ],
)
def test_trim_lengths(lengths, budget, truncate, expected):
    kept = trim_lengths(lengths, budget, truncate)
    assert kept == expected
    assert sum(kept) <= budget and all(k <= n for k, n in zip(kept, lengths))


def test_multi_segment_truncation_modes_differ_and_count():
    a, b = list(range(10, 20)), list(range(30, 40))
    robin = MultiSegmentPacker(9, 1, 2, truncate="round_robin")
    fall = MultiSegmentPacker(9, 1, 2, truncate="waterfall")
    assert robin([a], [b])["token_ids"].tolist() == [[1, 10, 11, 12, 2, 30, 31, 32, 2]]
    assert fall([a], [b])["token_ids"].tolist() == [[1, 10, 11, 12, 13, 14, 15, 2, 2]]
    assert robin.num_truncated == fall.num_truncated == 1


def test_multi_segment_packer_rejects_bad_input():
    packer = MultiSegmentPacker(8, 1, 2)
    with pytest.raises(ConfigError, match="different numbers of rows"):
        packer([[1], [2]], [[3]])
    with pytest.raises(ConfigError, match="unknown"):
        MultiSegmentPacker(8, 1, 2, truncate="longest")


def test_packed_examples_trim_to_the_longest_row_of_the_batch():
    packed = StartEndPacker(8, 1, 2)([[5], [5, 6, 7], [5, 6, 7, 8, 9]])
    examples = PackedExamples({**packed, "labels": np.array([0, 1, 1])})
    batch = examples.get([0, 1])
    assert batch["token_ids"].shape == (2, 5) and batch["token_ids"].dtype == np.int64
    assert batch["labels"].tolist() == [0, 1]
    assert examples.get([2])["token_ids"].shape == (1, 7)
    assert PackedExamples(packed, dynamic=False).get([0])["token_ids"].shape == (1, 8)
