"""Shared test fixtures: a fixed seed, tiny corpora in tmp_path, and the shared data folder."""

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.device import separate_compile_cache

SHARED_DATA = Path(
    os.environ.get(
        "LMFORGE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


def shared_data(name: str) -> Path:
    """Path of a file in ../shared/data; fails (never skips) when it is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(
            f"test data {path} is missing: these tests read ../shared/data (set LMFORGE_DATA_DIR "
            "to the folder that holds tinyshakespeare.txt, imdb-50k.csv.gz, ...)"
        )
    return path


# Compiled graphs made under ATEN_CPU_CAPABILITY=avx2 must not be loaded by a default run.
separate_compile_cache()

# Tiny models gain nothing from a second thread, and thread hand-offs dominate their ops.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch, tmp_path):
    """Named datasets resolve to ../shared/data; the download cache lives in tmp_path."""
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    """A small plain-text corpus (about 20 KB) written to tmp_path."""
    lines = [
        "ROMEO: But soft, what light through yonder window breaks?",
        "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
        "MERCUTIO: A plague o' both your houses!",
    ]
    text = "\n".join(lines[i % 3] for i in range(360)) + "\n"
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    return path


GPT2_TEXT = (
    "Why is the sky blue? Sunlight scatters off the air, and blue light scatters the most.\n"
)


@pytest.fixture(scope="session")
def hf_gpt2(tmp_path_factory) -> Path:
    """A tiny random GPT-2 saved by transformers, with a byte-level BPE (vocab.json, merges)."""
    transformers = pytest.importorskip("transformers")
    from lmforge.tokenizers.base import train_tokenizer

    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = train_tokenizer("bpe", [GPT2_TEXT * 20], vocab_size=300)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=tok.eos_id, eos_token_id=tok.eos_id,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.normal_(std=0.3)  # peaky: beams differ from greedy
    model.save_pretrained(folder)
    tok.tokenizer.model.save(str(folder))
    return folder


@pytest.fixture(scope="session")
def char_run(tmp_path_factory) -> Path:
    """A tiny char-level GPT run (3 steps, context 32) on ASCII text, trained by the CLI."""
    from lmforge.cli.main import main

    root = tmp_path_factory.mktemp("char-run")
    text = root / "text.txt"
    text.write_text("ROMEO: But soft, what light? JULIET: O Romeo!\n" * 60, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        argv = ["train", "--data", str(text), "--tokenizer", "char", "--preset", "gpt-baby",
                "--num-layers", "1", "--embed-dim", "16", "--max-seq-len", "32",
                "--batch-size", "4", "--max-steps", "3", "--threads", "1", "--json",
                "--out", str(root / "run")]  # fmt: skip
        assert main(argv) == 0
    return root / "run"


SERVE_TEXT = (
    "The wine is red and dry, with notes of cherry and oak. A bright white, crisp and fresh.\n"
)


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory) -> Path:
    """A run folder: GPT (context 512) with random weights and a byte-level BPE of 300 tokens."""
    from lmforge.models.gpt import GPTCausalLM, GPTConfig
    from lmforge.tokenizers.base import train_tokenizer
    from lmforge.training.checkpoint import save_weights, write_config

    folder = tmp_path_factory.mktemp("serve") / "run"
    folder.mkdir()
    tok = train_tokenizer("bpe", [SERVE_TEXT * 20], vocab_size=300)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, max_seq_len=512, embed_dim=32, num_heads=2, num_layers=2,
        ffn_dim=64,
    )  # fmt: skip
    model = GPTCausalLM(config).eval()
    with torch.no_grad():  # large random weights: greedy texts vary, not one repeated token
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(std=4 / weight.shape[-1] ** 0.5)
    write_config(folder, {"family": "gpt", "model": dataclasses.asdict(config)})
    save_weights(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer")
    return folder
