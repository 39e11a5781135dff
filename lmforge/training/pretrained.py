"""Starting a run from pretrained weights (--init-from, packaged presets): resolving the folder,
its tokenizer and training defaults, and loading its weights whole or backbone only."""

import dataclasses
import json
import logging
from pathlib import Path

import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.layers.lora import merge_lora_

log = logging.getLogger(__name__)


def load_pretrained(task: torch.nn.Module, state: dict) -> None:
    """Load a pretrained state dict: all of it when it is the same task, else its backbone only
    (a new head; a classifier's head must have as many classes as the data)."""
    own = task.state_dict()
    if own.keys() == state.keys():
        wrong = [k for k in own if own[k].shape != state[k].shape]
        if wrong and wrong[0].startswith("head"):
            raise ConfigError(
                f"--init-from has a head for {state[wrong[0]].shape[0]} classes, the data has "
                f"{own[wrong[0]].shape[0]}: --num-classes must match the loaded head"
            )
        task.load_state_dict(state)
        return
    prefix = "backbone."
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state
    try:
        task.backbone.load_state_dict(backbone)
    except RuntimeError as e:
        raise CheckpointError(
            f"--init-from: its backbone does not fit this model ({str(e).splitlines()[-1]})"
        ) from None
    log.info(
        "loaded the pretrained backbone; the %s head starts from random weights",
        type(task).__name__,
    )


def _init_from_options(options: dict) -> tuple[dict, Path | None]:
    """With init_from: the options, now naming the pretrained tokenizer, with the gpt2 preset's
    fine-tuning recipe (AdamW 2e-5, weight decay 0.01, 3 epochs of 128-token blocks) as defaults;
    and the pretrained folder. Without: the options unchanged, and None."""
    from lmforge.presets import all_presets, check_model_folder, find_checkpoint, tokenizer_path

    name = options.get("init_from")
    preset = all_presets().get(str(options.get("preset")))
    if not name and preset is not None and preset.get("package"):
        name = options["preset"]  # a packaged pretrained preset (all-minilm-l6-v2) starts from it
    if not name:
        return options, None

    if options.get("tokenizer") is not None:
        raise ConfigError(
            "--tokenizer cannot be combined with --init-from: the pretrained model's own "
            "tokenizer is used; drop --tokenizer"
        )
    folder = find_checkpoint(name)
    if folder is None:
        raise ConfigError(
            f"--init-from {name}: that preset has no pretrained weights; train it from scratch "
            f"with --preset {name}"
        )
    if options.get("init_from"):  # a broken folder fails before the data is prepared
        check_model_folder(folder)
    preset_name = name if str(name) in all_presets() else _default_preset(folder)
    defaults = {"preset": preset_name, "batching": "blocks"}
    return {**defaults, **options, "tokenizer": str(tokenizer_path(folder))}, folder


def _default_preset(folder: Path) -> str:
    """The preset whose training defaults suit a pretrained folder: a run's own preset, else one
    of its Hugging Face model_type."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return "gpt2"
    return config.get("preset") or _PRESET_OF_TYPE.get(config.get("model_type"), "gpt2")


# A Hugging Face model_type -> the preset of its family whose fine-tuning recipe it starts with.
_PRESET_OF_TYPE = {
    "bert": "bert-tiny",
    "llama": "smollm2-135m",
    "mistral": "smollm2-135m",
    "qwen2": "qwen2.5-0.5b",
    "qwen3": "qwen3-0.6b",
}


def _pretrained_start(folder: Path, model_over: dict, tok, block_size: int) -> tuple[dict, dict]:
    """(weights, model config) of a pretrained folder; of its config only dropout may change,
    and --max-seq-len only shortens the packed sequences (the position table stays)."""
    from lmforge.presets import check_tokenizer_fits, load_folder

    base = load_folder(folder)
    merge_lora_(base)  # a LoRA run starts the new one from its merged weights
    check_tokenizer_fits(tok, base, folder)
    model_over = {k: v for k, v in model_over.items() if k != "max_seq_len"}
    changed = sorted(k.replace("_", "-") for k in model_over if k != "dropout")
    if changed:
        raise ConfigError(
            f"--init-from keeps the pretrained model's shape: drop --{changed[0]} "
            "(only --dropout may change)"
        )
    model_cfg = {**dataclasses.asdict(base.config), **model_over}
    if block_size > model_cfg["max_seq_len"]:
        raise ConfigError(
            f"--block-size {block_size} is longer than the pretrained model's context "
            f"(max_seq_len={model_cfg['max_seq_len']}); use --block-size {model_cfg['max_seq_len']}"
            " or less"
        )
    state = base.state_dict()
    if not any(k.startswith("backbone.") for k in state):  # a bare backbone (HF BertModel)
        state = {"backbone." + k: v for k, v in state.items()}
    return state, model_cfg
