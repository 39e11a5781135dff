"""The Python entry points behind `lmforge.load`, `lmforge.load_tokenizer`, `generate_text`.

They accept what the CLI accepts: a run folder, a preset name, or (for tokenizers) a folder.
"""

from pathlib import Path

import torch

from lmforge.presets import from_preset


def load(run_or_preset: str | Path, device: str | None = None):
    """The task model of a run folder or preset, in eval mode.

    Example:
        model = lmforge.load("runs/shakespeare")
        logits = model(torch.tensor([[5, 6, 7]]))  # (1, 3, vocab_size)
    """
    return from_preset(run_or_preset, device=device)


def load_tokenizer(path: str | Path):
    """The tokenizer of a run folder, a prepared folder, or a tokenizer folder/file."""
    from lmforge.tokenizers.base import load_tokenizer as _load

    path = Path(path)
    if (path / "tokenizer").is_dir():
        path = path / "tokenizer"
    return _load(path)


def load_for_sampling(run: str | Path, device: str = "auto"):
    """(model on the picked device, tokenizer) of a run folder."""
    from lmforge.device import pick_device

    dev = pick_device(device)
    model = load(run, device=str(dev))
    return model, load_tokenizer(run)


@torch.inference_mode()
def generate_text(run_or_model, prompt: str, tokenizer=None, **options) -> str:
    """Generate a continuation of `prompt` and return it as one string.

    Example:
        text = lmforge.generate_text("runs/shakespeare", "ROMEO:", max_new_tokens=200, seed=1)
    """
    from lmforge.generation.generate import generate_text as _stream

    if isinstance(run_or_model, (str, Path)):
        model, tok = load_for_sampling(run_or_model, options.pop("device", "auto"))
    else:
        model, tok = run_or_model, tokenizer
    return "".join(_stream(model, tok, prompt, **options))
