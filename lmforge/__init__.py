"""lmforge: make text language models on PyTorch.

The public names users import live here; they load lazily so `lmforge --help` stays fast.
"""

__version__ = "0.1.0"

from lmforge.errors import CheckpointError, ConfigError, DataError, LmforgeError  # noqa: E402

_LAZY = {
    "train": ("lmforge.training.setup", "train"),
    "load": ("lmforge.api", "load"),
    "from_preset": ("lmforge.presets", "from_preset"),
    "load_tokenizer": ("lmforge.api", "load_tokenizer"),
    "generate_text": ("lmforge.api", "generate_text"),
    "Engine": ("lmforge.generation.engine", "Engine"),
    "SamplingParams": ("lmforge.generation.engine", "SamplingParams"),
    "prepare": ("lmforge.data.prepare", "prepare"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


__all__ = ["__version__", "LmforgeError", "ConfigError", "DataError", "CheckpointError", *_LAZY]
