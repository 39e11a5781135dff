"""Model families: one file each (gpt.py, ...), on the shared bases in base.py.

FAMILIES is the registry: adding a family is one line here, its file, its test file.
"""

import importlib

from lmforge.errors import ConfigError

# family -> (module, config class, default task class); a family module's TASKS dict names the
# task classes `--task` picks among ("classify", "mlm"), when it has more than one; its HF_NAMES
# table (see lmforge/interop/hf.py) names the Hugging Face model types it loads.
FAMILIES = {
    "gpt": ("lmforge.models.gpt", "GPTConfig", "GPTCausalLM"),
    "llama": ("lmforge.models.llama", "LlamaConfig", "LlamaCausalLM"),
    "bert": ("lmforge.models.bert", "BertConfig", "BertTextClassifier"),
    "char_rnn": ("lmforge.models.char_rnn", "CharRNNConfig", "CharRNNCausalLM"),
}


def family_module(family: str):
    """The module of a family name (lmforge.models.gpt for "gpt")."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}: known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family][0])


def family_classes(family: str):
    """(ConfigClass, TaskClass) of a family name."""
    mod = family_module(family)
    _, cfg, task = FAMILIES[family]
    return getattr(mod, cfg), getattr(mod, task)
