"""Prompts as ids: one or many prompts in any form, cropping to the context, left padding."""

import logging

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.prompts import as_prompts, crop_prompts, left_padded


def test_one_prompt_or_several_in_any_form_become_id_lists():
    assert as_prompts([5, 6]) == [[5, 6]]
    assert as_prompts(torch.tensor([5, 6])) == [[5, 6]]
    assert as_prompts(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert as_prompts([[1], (2, 3)]) == [[1], [2, 3]]
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        as_prompts([[1], []])
    with pytest.raises(ConfigError, match=r"shape \(1, 1, 1\)"):
        as_prompts(torch.zeros(1, 1, 1, dtype=torch.long))


def test_long_prompts_keep_their_last_tokens_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lmforge.generation.generate"):
        assert crop_prompts([[1, 2, 3, 4, 5], [6]], context=4, room=1) == [[3, 4, 5], [6]]
    assert len(caplog.records) == 1 and "keeping its last 3 tokens" in caplog.text
    assert crop_prompts([[1, 2]], context=None) == [[1, 2]]


def test_left_padding_aligns_the_ends_and_marks_the_pads():
    ids, real = left_padded([[7, 8, 9], [4]], extra=1, device="cpu")
    assert ids.tolist() == [[7, 8, 9, 0], [4, 4, 4, 0]]  # pads repeat the row's first token
    assert real.tolist() == [[True] * 4, [False, False, True, True]]
