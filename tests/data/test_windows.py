"""Tests for lmforge.data.windows: which tokens become inputs and targets, and what is padding."""

import numpy as np
import pytest

from lmforge.data.windows import IGNORE, ChunkedBlocks, PaddedDocuments, StrideWindows


def _targets(examples) -> np.ndarray:
    batch = examples.get(np.arange(len(examples)))
    return batch["labels"][batch["labels"] != IGNORE]


@pytest.mark.parametrize("num_tokens", [2, 9, 17, 33, 34, 100])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_stride_windows_with_partial_cover_every_target_once(num_tokens, block_size):
    tokens = np.arange(num_tokens) + 1000
    windows = StrideWindows(tokens, block_size, keep_partial=True)
    np.testing.assert_array_equal(np.sort(_targets(windows)), tokens[1:])  # each exactly once
    batch = windows.get(np.arange(len(windows)))
    assert batch["token_ids"].shape == (len(windows), block_size)
    has_target = batch["labels"] != IGNORE
    # the target at each position is the token right after the input there
    np.testing.assert_array_equal(batch["labels"][has_target], batch["token_ids"][has_target] + 1)


def test_stride_windows_without_partial_take_only_full_windows():
    tokens = np.arange(23)  # 22 (input, target) pairs: two full windows of 8, 6 pairs left over
    windows = StrideWindows(tokens, 8)
    assert len(windows) == 2
    batch = windows.get([0, 1])
    np.testing.assert_array_equal(batch["token_ids"], [np.arange(8), np.arange(8, 16)])
    np.testing.assert_array_equal(batch["labels"], [np.arange(1, 9), np.arange(9, 17)])
    assert len(StrideWindows(np.arange(8), 8)) == 0  # 7 pairs do not fill a block of 8


def test_overlapping_stride_windows():
    windows = StrideWindows(np.arange(20), 8, stride=4)
    assert windows.starts.tolist() == [0, 4, 8]
    assert windows.get([2])["labels"].tolist() == [list(range(9, 17))]


def test_padded_documents_truncate_pad_and_mask():
    docs = [np.arange(1, 4), np.arange(10, 22), np.arange(30, 39)]  # 3, 12 and 9 tokens
    examples = PaddedDocuments(docs, length=8, pad_id=0)
    batch = examples.get([0, 1, 2])
    assert batch["token_ids"].shape == batch["labels"].shape == (3, 8)
    assert batch["token_ids"][0].tolist() == [1, 2, 3, 0, 0, 0, 0, 0]
    assert batch["labels"][0].tolist() == [2, 3] + [IGNORE] * 6
    assert batch["padding_mask"][0].tolist() == [True] * 3 + [False] * 5
    # a long document keeps its first length + 1 tokens: 8 inputs and their 8 targets
    assert batch["token_ids"][1].tolist() == list(range(10, 18))
    assert batch["labels"][1].tolist() == list(range(11, 19))
    assert batch["padding_mask"][1].all()
    assert batch["labels"][2].tolist() == list(range(31, 39))  # exactly length + 1 tokens


def test_dynamic_padding_pads_to_the_longest_in_the_batch():
    docs = [np.arange(1, 4), np.arange(10, 15), np.arange(20, 40), np.array([7])]
    examples = PaddedDocuments(docs, length=16, pad_id=-1, dynamic=True)
    short = examples.get([0, 1])
    assert short["token_ids"].shape == (2, 4)  # 5 tokens -> 4 inputs
    assert short["token_ids"][0].tolist() == [1, 2, 3, -1]
    assert short["labels"][0].tolist() == [2, 3, IGNORE, IGNORE]
    assert examples.get([1, 2])["token_ids"].shape == (2, 16)  # capped at length
    single = examples.get([3])  # a one-token document has no target at all
    assert single["token_ids"].shape == (1, 1) and single["labels"].tolist() == [[IGNORE]]


def test_chunked_blocks_drop_the_remainder():
    tokens = np.arange(100, 123)  # 23 tokens: blocks of 5 give 4 blocks, 3 tokens dropped
    blocks = ChunkedBlocks(tokens, 5)
    assert len(blocks) == 4
    batch = blocks.get(np.arange(4))
    np.testing.assert_array_equal(batch["token_ids"].ravel(), tokens[:20])
    assert batch["labels"][0].tolist() == [101, 102, 103, 104, IGNORE]
    assert not np.isin(tokens[20:], batch["token_ids"]).any()
    assert len(ChunkedBlocks(np.arange(4), 5)) == 0


def test_chunked_blocks_pad_a_partial_block_with_eos_and_keep_real_eos_as_targets():
    EOS = 0  # GPT-2: end-of-text separates documents and is also the padding
    tokens = np.array([5, 6, EOS, 7, 8, 9, EOS, 4, 3, EOS, 2, 1, EOS])  # 13 = 2 x 5 + 3
    train = ChunkedBlocks(tokens, 5, pad_id=EOS)
    assert len(train) == 2 and "padding_mask" not in train.get([0, 1])
    assert train.get([0])["labels"].tolist() == [[6, EOS, 7, 8, IGNORE]]  # the real eos: a target
    held_out = ChunkedBlocks(tokens, 5, pad_id=EOS, keep_partial=True)
    assert len(held_out) == 3
    batch = held_out.get([2, 1])  # padded to the longest block of the batch: 5
    assert batch["token_ids"].tolist() == [[2, 1, EOS, EOS, EOS], [9, EOS, 4, 3, EOS]]
    assert batch["padding_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["labels"].tolist() == [[1, EOS, IGNORE, IGNORE, IGNORE], [EOS, 4, 3, EOS, IGNORE]]
    alone = held_out.get([2])  # dynamic padding: a batch of the short block alone is not padded
    assert alone["token_ids"].tolist() == [[2, 1, EOS]] and "padding_mask" not in alone
    assert len(ChunkedBlocks(tokens[:11], 5, keep_partial=True)) == 2  # one token: no target
