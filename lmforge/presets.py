"""Every family's PRESETS in one dict, and `from_preset()`: a preset name or a run folder -> model.

Our run folders say their family in config.json (`"family": "gpt"`); that is how they are told
apart from other folders.
"""

import dataclasses
import importlib
from pathlib import Path

from lmforge.errors import ConfigError

# family -> (module, config class, task class for causal LM)
FAMILIES = {
    "gpt": ("lmforge.models.gpt", "GPTConfig", "GPTCausalLM"),
}


def family_classes(family: str):
    """(ConfigClass, TaskClass) of a family name."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}: known: {', '.join(FAMILIES)}")
    module, cfg, task = FAMILIES[family]
    mod = importlib.import_module(module)
    return getattr(mod, cfg), getattr(mod, task)


def all_presets() -> dict[str, dict]:
    """name -> {"family", "config", "train", "about"} across every family."""
    out = {}
    for family, (module, _, _) in FAMILIES.items():
        for name, entry in importlib.import_module(module).PRESETS.items():
            out[name] = {"family": family, "train": {}, **entry}
    return out


def get_preset(name: str) -> dict:
    presets = all_presets()
    if name not in presets:
        raise ConfigError(
            f"unknown preset {name!r}: known presets: {', '.join(presets)} "
            "(`lmforge presets` describes them)"
        )
    return presets[name]


def build_task(family: str, config: dict):
    """Build a family's causal-LM task from a plain config dict (unknown keys are an error)."""
    cfg_cls, task_cls = family_classes(family)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ConfigError(f"unknown {family} config field(s) {unknown}; known: {sorted(names)}")
    return task_cls(cfg_cls(**config))


def from_preset(name_or_path: str | Path, device: str | None = None):
    """A task model from a preset name (random weights) or a run folder (trained weights).

    Example:
        model = lmforge.load("runs/shakespeare")
        logits = model(torch.tensor([[1, 2, 3]]))   # (1, 3, vocab_size)
    """
    from lmforge.training.checkpoint import load_weights, read_config

    path = Path(name_or_path)
    if path.is_dir():
        config = read_config(path)
        weights = path / "model.safetensors"
        if not weights.is_file():
            from lmforge.errors import CheckpointError

            raise CheckpointError(f"{path} has no model.safetensors: the run never saved weights")
        task = build_task(config["family"], config["model"])
        load_weights(task, weights)
    elif str(name_or_path) in all_presets():
        preset = get_preset(str(name_or_path))
        task = build_task(preset["family"], preset["config"])
    else:
        from lmforge.errors import CheckpointError

        raise CheckpointError(
            f"run folder {path} does not exist, and it is no preset name either "
            f"(known: {', '.join(all_presets())}): check the path"
        )
    task.eval()
    if device is not None:
        task.to(device)
    return task
