"""LoRA adapters in PEFT's format: adapter_model.safetensors + adapter_config.json, with the
Hugging Face names of the architecture (`base_model.model.<their module>.lora_A.weight`).

Names come from the family's HF_NAMES table, as for whole models. Before editing: lmforge fuses
q/k/v (and Llama's gate/up) into one Linear. Our adapter on a fused layer (A: r x in, B: out x r)
is exactly one adapter per part sharing A, with B cut by rows as the weight is. An adapter made
elsewhere with its own A per part loads in block form: A stacks the parts' A (p*r x in), B is
block-diagonal (out x p*r), rank p*r and alpha p*alpha keep the scaling alpha/r; a part the
adapter leaves out (PEFT's default q_proj, v_proj) is a zero block.
"""

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError
from lmforge.files import write_atomic, write_folder_atomic
from lmforge.interop.hf import (
    _architecture,
    _layers,
    _names,
    _regroup,
    _split,
    _table,
    _theirs,
    export_problems,
    export_type,
)
from lmforge.layers.heads import LMHead
from lmforge.layers.lora import apply_lora, lora_layers
from lmforge.models.base import Backbone

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."  # PeftModel's name for the model it wraps
ADAPTER_FOLDER = "adapter"  # RUN/adapter


def _layout(model) -> tuple[str, dict, dict[str, tuple[str, list[str]]]]:
    """(model_type, table, {our layer name: (our weight key pattern, their module names)}) of
    every linear layer in the family's Hugging Face table, block indices filled in."""
    model_type = export_type(model)
    problems = export_problems(model.config, model_type, model) if model_type else ["no table"]
    if problems:
        raise ConfigError(
            f"this {model.family} model ({type(model).__name__}) has no Hugging Face layout, so "
            f"no PEFT adapter names: {problems[0]}"
        )
    table = _table(model_type)
    layers = {}
    for mine, their in _names(table, _their_architecture(model, table)).items():
        if their is None or not mine.endswith(".weight"):
            continue
        for i in _layers(mine, model.config.num_layers):
            modules = [t.format(i=i).removesuffix(".weight") for t in _theirs(their)]
            if isinstance(model, Backbone) and table.get("base_prefix"):
                modules = [m.removeprefix(table["base_prefix"]) for m in modules]
            layers[mine.format(i=i).removesuffix(".weight")] = (mine, modules)
    return model_type, table, layers


def _their_architecture(model, table: dict) -> str:
    return _architecture(model, table) if "tasks" in table else table["architecture"]


def _full_weights(model, prefixes) -> dict[str, str]:
    """{our key: their key} of the weights under our module names `prefixes` (a classifier's
    head), which an adapter holds whole (PEFT's modules_to_save)."""
    table = _table(export_type(model))
    names = _names(table, _their_architecture(model, table))
    out = {}
    for key in model.state_dict():
        if key.split(".")[0] in prefixes:
            their = names.get(key)
            if not isinstance(their, str):
                raise ConfigError(f"{key} has no Hugging Face name: a PEFT adapter cannot hold it")
            out[key] = their
    return out


def adapter_tensors(model) -> tuple[dict[str, Tensor], list[str]]:
    """({PEFT key: tensor}, their module names) of the LoRA layers in `model`: A copied to every
    part of a fused layer, B cut by rows as the table cuts the weight."""
    _, table, layers = _layout(model)
    tensors, modules = {}, []
    for name, layer in lora_layers(model).items():
        if name not in layers:
            raise ConfigError(f"{name} has no Hugging Face name: a PEFT adapter cannot hold it")
        mine, theirs = layers[name]
        a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
        if mine in table.get("per_head", ()):  # (3, H, D) rows -> (H, 3, D), as the weight
            b = _regroup(b, 3, model.config.num_heads)
        for module, part in zip(theirs, _split(b, mine, len(theirs), model.config, table)):
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a.float().cpu().clone()  # one per part
            tensors[f"{PREFIX}{module}.lora_B.weight"] = part.float().contiguous().cpu()
            modules.append(module)
    return tensors, modules


def save_adapter(model, folder: str | Path, base: str = "", trained: tuple = ()) -> None:
    """Write the LoRA adapter of `model` as PEFT does into `folder` (made if missing):
    adapter_model.safetensors and adapter_config.json. PeftModel.from_pretrained(transformers
    model of `base`, folder) then computes what `model` does.

    Args:
        base: the base model's name or folder (base_model_name_or_path).
        trained: our names of modules trained whole (a classifier's "head"), saved whole as
            PEFT's modules_to_save.
    """
    from lmforge.run_folder import save_tensors

    layers = lora_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapter to save")
    tensors, modules = adapter_tensors(model)
    whole = _full_weights(model, trained)
    state = model.state_dict()
    for mine, their in whole.items():
        tensors[PREFIX + their] = state[mine].detach().float().cpu().clone()
    first = next(iter(layers.values()))
    ranks = {(m.rank, m.alpha) for m in layers.values()}
    dropout = first.dropout.p if isinstance(first.dropout, torch.nn.Dropout) else 0.0
    rank_pattern, alpha_pattern = {}, {}
    if len(ranks) > 1:  # block-form layers of an imported adapter: their own rank and alpha
        _, _, names = _layout(model)
        for name, layer in layers.items():
            for module in names[name][1]:
                rank_pattern[module], alpha_pattern[module] = layer.rank, layer.alpha
    config = {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": base or None,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(set(modules)),  # full names: PEFT matches them exactly
        "fan_in_fan_out": export_type(model) == "gpt2",  # GPT-2's Conv1D stores (in, out)
        "bias": "none",
        "modules_to_save": sorted({t.rpartition(".")[0] for t in whole.values()}) or None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "inference_mode": True,
        "revision": None,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    write_atomic(folder / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")


def _task_type(model) -> str | None:
    """PEFT's task_type for our task: CAUSAL_LM, SEQ_CLS, or None (a masked LM)."""
    if hasattr(model, "step"):
        return "CAUSAL_LM"
    return "SEQ_CLS" if hasattr(model, "num_classes") else None


def save_run_adapter(model, run_dir: str | Path, base: str = "", trained=()) -> Path | None:
    """RUN/adapter/ (save_adapter), replaced atomically; None, with a warning, for a model with no
    Hugging Face layout (no PEFT names): its run still holds the adapter in model.safetensors."""
    try:
        _layout(model)
        _full_weights(model, trained)
    except ConfigError as e:
        log.warning("no PEFT adapter folder written: %s", e)
        return None
    out = Path(run_dir) / ADAPTER_FOLDER
    return write_folder_atomic(out, lambda tmp: save_adapter(model, tmp, base, tuple(trained)))


def read_adapter_config(folder: str | Path) -> dict:
    """adapter_config.json of a PEFT LoRA adapter folder; CheckpointError for anything else."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(
            f"{folder} is not a PEFT adapter folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}): "
            "pass the folder save_pretrained wrote, or a run's adapter/ folder"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is not valid JSON: the adapter folder is damaged") from None
    unsupported = [
        f"{k}={config[k]!r}"
        for k, ok in (("peft_type", "LORA"), ("bias", "none"))
        if config.get(k, ok) != ok
    ]
    if config.get("use_dora"):
        unsupported.append("use_dora=True")
    if unsupported:
        raise CheckpointError(
            f"{folder}: lmforge loads plain LoRA adapters (peft_type LORA, bias none, no DoRA), "
            f"and this one has {', '.join(unsupported)}"
        )
    return config


def load_adapter(model, folder: str | Path) -> list[str]:
    """Add the PEFT LoRA adapter in `folder` to `model` (in place, frozen base); returns our
    names of the layers it wraps. CheckpointError when it names modules the model lacks."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    _, table, layers = _layout(model)
    theirs = load_file(str(folder / ADAPTER_WEIGHTS))
    found: dict[str, dict[str, Tensor]] = {}  # their module -> {"A": ..., "B": ...}
    whole = {}  # their key -> tensor of the modules it holds whole (modules_to_save)
    for key, tensor in theirs.items():
        module, _, kind = key.removeprefix(PREFIX).rpartition(".lora_")
        if kind in ("A.weight", "B.weight"):
            found.setdefault(module, {})[kind[0]] = tensor.float()
        else:
            whole[key.removeprefix(PREFIX)] = tensor
    ours = {t: m for m, t in _full_weights(model, ("head",)).items()} if whole else {}
    if set(whole) - set(ours):
        key = sorted(set(whole) - set(ours))[0]
        raise CheckpointError(
            f"{folder}: {key!r} is neither a LoRA weight nor a weight of the model's head, "
            f"which lmforge loads: was the adapter made for another model?"
        )
    owner = {m: name for name, (_, modules) in layers.items() for m in modules}
    unknown = sorted(set(found) - set(owner))
    if unknown:
        raise CheckpointError(
            f"{folder}: the adapter names {unknown[0]!r}, which this {type(model).__name__} does "
            f"not have ({len(unknown)} unknown in all): was it made for another model?"
        )
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}

    def pattern(values: dict, module: str, default):
        hit = next((k for k in values if module == k or module.endswith("." + k)), None)
        return default if hit is None else values[hit]

    divisor = (lambda rank: rank**0.5) if config.get("use_rslora") else (lambda rank: rank)
    weights, ranks = {}, {}
    for name, (mine, modules) in layers.items():
        present = [m for m in modules if m in found]
        if not present:
            continue
        # each part's (A, B, scaling); the scaling PEFT applies is alpha / r (rsLoRA: sqrt(r))
        parts = {
            m: (
                found[m]["A"],
                found[m]["B"],
                float(pattern(alpha_pattern, m, alpha)) / divisor(int(pattern(rank_pattern, m, r))),
            )
            for m in present
        }
        first = parts[present[0]]
        if len(present) == len(modules) and all(
            torch.equal(first[0], a) and s == first[2] for a, _, s in parts.values()
        ):  # one A shared by every part: our own form
            a, b, scaling = first[0], torch.cat([parts[m][1] for m in modules]), first[2]
        else:  # block form, each part's scaling folded into its block of B
            out = model.get_submodule(name).out_features
            rows = [
                len(x) for x in _split(torch.empty(out), mine, len(modules), model.config, table)
            ]
            a = torch.cat([parts[m][0] for m in present])
            b = torch.zeros(out, a.shape[0])
            row = col = 0
            for m, num_rows in zip(modules, rows):
                if m in parts:
                    part_a, part_b, s = parts[m]
                    b[row : row + num_rows, col : col + len(part_a)] = part_b * s
                    col += len(part_a)
                row += num_rows
            scaling = 1.0
        if mine in table.get("per_head", ()):  # their head-by-head rows -> our [q | k | v]
            b = _regroup(b, model.config.num_heads, 3)
        ranks[name] = (len(a), scaling * len(a))  # alpha such that alpha / rank is the scaling
        weights[name] = (a, b)
    if not weights:
        raise CheckpointError(f"{folder}: the adapter holds no LoRA weights")
    head = getattr(model, "head", None)
    if whole and isinstance(head, LMHead):  # PEFT's modules_to_save copy of a tied lm_head
        head.untie()
    with torch.no_grad():
        for key, tensor in whole.items():
            model.get_parameter(ours[key]).copy_(tensor)
    dropout = float(config.get("lora_dropout") or 0.0)
    names = apply_lora(model, r, alpha, dropout, targets=list(weights), ranks=ranks)
    for name, layer in lora_layers(model).items():
        a, b = weights[name]
        with torch.no_grad():
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)
    return names
