"""The Python entry points behind `lmforge.load`, `lmforge.load_tokenizer`, `generate_text`.

They accept what the CLI accepts: a run folder, a Hugging Face folder or name (distilgpt2), a
preset name, or (for tokenizers) a tokenizer folder.
"""

from pathlib import Path

import torch

from lmforge.errors import ConfigError
from lmforge.presets import from_preset


def load(run_or_preset: str | Path, device: str | None = None):
    """The task model of a run folder, a Hugging Face folder or name, or a preset, in eval mode.

    Names resolve as in `lmforge.presets.find_checkpoint` (LMFORGE_MODELS_DIR, the Hugging Face
    cache, a download); a preset with no weights anywhere (gpt-baby) gets random weights.

    Example:
        model = lmforge.load("runs/shakespeare")  # or "distilgpt2", "path/to/hf-folder"
        logits = model(torch.tensor([[5, 6, 7]]))  # (1, 3, vocab_size)
    """
    return from_preset(run_or_preset, device=device)


def load_tokenizer(path: str | Path):
    """The tokenizer of a run folder, a Hugging Face folder or name, a prepared folder, or a
    tokenizer folder/file."""
    from lmforge.presets import find_checkpoint, tokenizer_path
    from lmforge.tokenizers.base import load_tokenizer as _load

    path = Path(path)
    if not path.exists():
        folder = find_checkpoint(path)
        if folder is None:
            raise ConfigError(
                f"preset {str(path)!r} has no trained tokenizer; train a run with it first "
                f"(lmforge train --preset {path})"
            )
        path = folder
    return _load(tokenizer_path(path) if path.is_dir() else path)


def load_for_sampling(run: str | Path, device: str = "auto"):
    """(model on the picked device, tokenizer) of a run folder, Hugging Face folder or name."""
    from lmforge.device import pick_device
    from lmforge.presets import check_tokenizer_fits, find_checkpoint, load_folder

    dev = pick_device(device)
    folder = find_checkpoint(run)
    if folder is None:
        raise ConfigError(
            f"preset {str(run)!r} has random weights and no tokenizer; train a run with it first "
            f"(lmforge train --preset {run}) and sample from the run folder"
        )
    model = load_folder(folder)
    tokenizer = load_tokenizer(folder)
    check_tokenizer_fits(tokenizer, model, folder)
    return model.to(dev), tokenizer


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
