"""Backbone, Task and CausalLM bases: parameter counts and the decoding contract."""

import pytest
import torch.nn as nn

from lmforge.models.base import Backbone, CausalLM


class _Backbone(Backbone):
    family = "toy"

    def __init__(self):
        super().__init__(config={"embed_dim": 3})
        self.embed = nn.Embedding(5, 3)
        self.proj = nn.Linear(3, 3)


def test_num_params_counts_all_or_trainable():
    backbone = _Backbone()
    assert backbone.num_params() == 5 * 3 + 3 * 3 + 3
    backbone.embed.weight.requires_grad_(False)
    assert backbone.num_params(trainable_only=True) == 3 * 3 + 3


def test_causal_lm_shares_config_and_asks_for_the_contract():
    model = CausalLM(_Backbone())
    assert model.config == {"embed_dim": 3} and model.preprocessor is None
    assert model.num_params() == _Backbone().num_params()
    with pytest.raises(NotImplementedError, match="init_state"):
        model.init_state(1)
    with pytest.raises(NotImplementedError, match="step"):
        model.step(None, None)
    with pytest.raises(NotImplementedError, match="loss"):
        model.loss({})
