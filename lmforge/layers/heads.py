"""Output heads that turn hidden states (B, T, C) into scores.

A tied LMHead shares its weight Parameter with the token embedding (GPT-2, nanoGPT): both keys
appear in state_dict() but hold one tensor, and parameters() counts it once.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class LMHead(nn.Module):
    """Scores over the vocabulary: hidden (B, T, C) -> logits (B, T, V).

    Args:
        tied_to: a token embedding whose (V, C) weight this head reuses; None for its own weight,
            initialised normal(0, 0.02).
        use_bias: add a learned bias per vocabulary entry, initialised to zero.
    """

    def __init__(
        self,
        embed_dim: int,
        vocab_size: int,
        use_bias: bool = False,
        tied_to: nn.Embedding | None = None,
    ):
        super().__init__()
        self.is_tied = tied_to is not None
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, embed_dim).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if use_bias else None

    def untie(self) -> None:
        """Give a tied head its own copy of the embedding's weight (a head trained apart from the
        embedding, as PEFT's modules_to_save does); an untied head stays as it is."""
        if self.is_tied:
            self.weight = nn.Parameter(self.weight.detach().clone())
            self.is_tied = False

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight, self.bias)  # (B, T, V)
