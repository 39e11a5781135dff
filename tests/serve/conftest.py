"""A tiny random GPT run with a byte-level BPE (it encodes the ChatML template), and a server on
a free loopback port for the module that asks for one."""

import dataclasses
from pathlib import Path

import pytest
import torch

TEXT = "The wine is red and dry, with notes of cherry and oak. A bright white, crisp and fresh.\n"


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory) -> Path:
    """A run folder: GPT (context 512) with random weights and a byte-level BPE of 300 tokens."""
    from lmforge.models.gpt import GPTCausalLM, GPTConfig
    from lmforge.tokenizers.base import train_tokenizer
    from lmforge.training.checkpoint import save_weights, write_config

    folder = tmp_path_factory.mktemp("serve") / "run"
    folder.mkdir()
    tok = train_tokenizer("bpe", [TEXT * 20], vocab_size=300)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, max_seq_len=512, embed_dim=32, num_heads=2, num_layers=2,
        ffn_dim=64,
    )  # fmt: skip
    model = GPTCausalLM(config).eval()
    with torch.no_grad():
        model.backbone.embed.token.weight.normal_(std=0.3)  # peaky logits: sampled texts differ
    write_config(folder, {"family": "gpt", "model": dataclasses.asdict(config)})
    save_weights(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer")
    return folder
