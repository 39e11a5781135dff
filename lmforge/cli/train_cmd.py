"""`lmforge train`: train a model on a corpus (raw or prepared) into a run folder."""

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from lmforge.cli import options
from lmforge.presets import FAMILIES, family_classes, get_preset
from lmforge.training.config import TrainConfig
from lmforge.training.setup import train


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a model",
        formatter_class=options.HelpFormatter,
        description="Train a model from a preset on a corpus; any model config field can be "
        f'overridden as a flag. A default marked "the preset\'s" comes from --preset '
        f"({TrainConfig.preset} unless given; `lmforge presets` lists them).",
    )
    shown = _preset_defaults(TrainConfig.preset)
    options.add_options(p, TrainConfig, shown=shown)
    seen = {f.name for f in dataclasses.fields(TrainConfig)} | {"vocab_size"}
    group = p.add_argument_group("model config overrides")
    for family in FAMILIES:
        cfg_cls, _ = family_classes(family)
        model_shown = {f.name: "the preset's" for f in dataclasses.fields(cfg_cls)}
        options.add_options(group, cfg_cls, skip=tuple(seen), shown={**model_shown, **shown})
        seen |= {f.name for f in dataclasses.fields(cfg_cls)}
    p.add_argument(
        "--json", action="store_true", help="print one final JSON line of results (default: off)"
    )
    return p


def _preset_defaults(name: str) -> dict[str, str]:
    """--help's default of each option that preset `name` sets: "the preset's; NAME: VALUE"."""
    preset = get_preset(name)
    values = {**preset["config"], **preset.get("train", {})}
    if preset.get("tokenizer"):
        values["tokenizer"] = preset["tokenizer"]
    values.pop("vocab_size", None)  # the tokenizer's
    return {k: f"the preset's; {name}: {options.show_default(v)}" for k, v in values.items()}


def run(args: argparse.Namespace) -> int:
    names = set(vars(args)) - {"json", "config", "debug", "command", "_run"}
    file_opts, flags = options.layered(args, names)
    file_opts = options.own_keys(file_opts, set(vars(args)))
    if not {"out", "resume"} & {k for k, v in {**file_opts, **flags}.items() if v}:
        flags["out"] = fresh_out({**file_opts, **flags})
    result = train(**{**file_opts, **flags})
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports for everyone
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        line = f"done: {result['steps']} steps, "
        if result["val_loss"] is None:  # --val-fraction 0: nothing held out
            losses = result.get("epoch_losses") or [result["train_loss"]]
            line += f"train loss {losses[-1]:.4f} (no validation split)"
        else:
            line += f"val loss {result['val_loss']:.4f}"
            if result.get("kept") == "best":
                line += f" (kept step {result['best_step']}; last {result['final_val_loss']:.4f})"
        if "val_bits_per_char" in result:
            line += f" ({result['val_bits_per_char']:.3f} bits/char)"
        print(f"{line}, {result['tokens_per_s']:,.0f} tokens/s; run saved in {result['run']}")
    return 0


def fresh_out(opts: dict) -> str:
    """The default --out: runs/<preset>-<timestamp>, a new folder for each run (under torchrun,
    named after the job's run id, which every rank shares); --resume keeps runs/latest."""
    name = Path(opts["init_from"]).name if opts.get("init_from") else opts.get("preset")
    name = name or TrainConfig.preset
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"runs/{name}-{os.environ.get('TORCHELASTIC_RUN_ID', 'ddp')}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, n = f"runs/{name}-{stamp}", 1
    while Path(out).exists():  # two runs started in the same second
        n += 1
        out = f"runs/{name}-{stamp}-{n}"
    return out
