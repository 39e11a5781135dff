"""Read and write Hugging Face model folders: config.json, weights and tokenizer files.

Every family that loads Hugging Face checkpoints carries a literal HF_NAMES table in its model
file, keyed by their `model_type`; this module applies it, the same way for every family. Weights
are read without running pickled code: model.safetensors, or pytorch_model.bin through
torch.load(weights_only=True), and nothing else. Adding a family = its table + its FAMILIES line.

A table (only `config`, `weights` and `architecture` are required):

    config       {our config field: their config.json field}; a tuple of their fields is read
                 from the first and written to all (BERT's two dropouts)
    activations  {their activation name: ours}; the first name listed for ours is written
    defaults     {their field: value}: their config class's defaults, for fields a file leaves out
    requires     {their field: value}: switches we have no counterpart for, and the one value
                 we load; written back on export
    fixed        {our field: value}: our switches this layout always has (GPT-2: pre-norm, ...)
    exports_too  {our field: value}: other values of `fixed` switches that still export exactly
    why          {our field: reason}: what the layout needs instead, for the export refusal
    task_fixed   {task attribute: value}: the same for a task's own switches (extra_layers)
    fits         how to train a model that exports, for the end of a refusal
    architecture the `architectures` entry written, and read when a file names none
    tasks        {their architecture: our task class name in the family file}; a backbone
                 class loads the bare base model (saved without `base_prefix`)
    base_prefix  their base model's prefix, missing in files saved from the bare base model
    weights      {our key: their key}; "{i}" stands for the block index; a tuple of their keys
                 (query, key, value) is concatenated along dim 0 into our fused weight and split
                 back on export (equal parts, or by `split`)
    split        {our key: (config fields,)}: the fused weight's parts, each field times the head
                 dim (num_heads, num_kv_heads, num_kv_heads), where the parts differ in size
    heads        {their architecture: {our key: their key, or None where it has no such weight}}
    transpose    our keys whose tensors are stored (in, out) there (GPT-2's Conv1D)
    per_head     our fused [q | k | v] keys whose rows are head by head there, [q k v] of head
                 0, then of head 1, ... (GPT-NeoX's query_key_value): reordered both ways
    optional     our keys a file may lack (BERT's pooler)
    tied         {our key: our key it shares}: filled from the other weight when the config ties
                 (no `tie_embeddings` field counts as tied); their copy is not needed
    ignored      their keys (or key endings) we do not use: buffers, unused heads
    renames      {old spelling: new} in their keys (LayerNorm gamma/beta)
    token_ids    {their field: (tokenizer roles tried in order, then a default)}, written
    written      {their field: value}, written as it is (dtype)
    packs_tokens True: their tokenizer adds the start/end tokens itself (BERT's [CLS] a [SEP])
    rope         True: our rotary fields (rope_base, rope_scaling and its rope_* arguments) are
                 read from their rope_theta + rope_scaling or the newer rope_parameters, and
                 written in both forms; a family without them (gpt) loads only base 10000
                 without scaling

A family with several tables exports as the first whose fixed switches its model matches
(llama: llama, mistral, qwen2 or qwen3).
"""

import dataclasses
import inspect
import json
import pickle
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError, LmforgeError
from lmforge.models import FAMILIES, family_classes, family_module
from lmforge.models.base import Backbone

FORMATS = ("hf", "lmforge")


@cache
def model_types() -> dict[str, str]:
    """Hugging Face model_type -> our family, from every family's HF_NAMES table."""
    return {
        model_type: family
        for family in FAMILIES
        for model_type in getattr(family_module(family), "HF_NAMES", {})
    }


def __getattr__(name):
    # MODEL_TYPES / LOADABLE: their old names; convert() and the lmforge-folder writers moved to
    # lmforge.api (loading sits above interop), the old import path examples use still works.
    if name in ("MODEL_TYPES", "LOADABLE"):
        return model_types() if name == "MODEL_TYPES" else tuple(model_types())
    if name in ("convert", "write_lmforge_folder", "run_config"):
        from lmforge import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _table(model_type: str) -> dict:
    return family_module(model_types()[model_type]).HF_NAMES[model_type]


def _supported(model_type, where) -> dict:
    if model_type not in model_types():
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(model_types())}"
        )
    return _table(model_type)


def _layers(key: str, num_layers: int) -> range:
    return range(num_layers) if "{i}" in key else range(1)


def _theirs(their) -> tuple:
    return their if isinstance(their, tuple) else (their,)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")


# ---------------------------------------------------------------- config.json


def read_hf_config(folder: str | Path) -> dict:
    """folder/config.json of a supported model_type; CheckpointError names what is wrong."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no config.json: pass a Hugging Face model folder "
            "(config.json + model.safetensors or pytorch_model.bin + tokenizer files)"
        )
    try:
        config = json.loads(path.read_text())
    except ValueError:
        raise CheckpointError(f"{path} is not valid JSON: download or export it again") from None
    _supported(config.get("model_type") if isinstance(config, dict) else None, folder)
    return config


def config_from_hf(hf_config: dict, where: str | Path = "config.json"):
    """Our family config (GPTConfig for gpt2, BertConfig for bert) from a config.json dict."""
    model_type = hf_config.get("model_type")
    table = _supported(model_type, where)
    family = model_types()[model_type]
    values = {**table.get("defaults", {}), **hf_config}
    for key, supported in table.get("requires", {}).items():
        if values.get(key, supported) != supported:
            raise CheckpointError(
                f"{where}: {key}={values[key]!r} is not supported; lmforge's "
                f"{family} family loads only {key}={supported!r}"
            )
    ours = {mine: values.get(_theirs(t)[0]) for mine, t in table["config"].items()}
    cfg_cls, _ = family_classes(family)
    if table.get("rope"):
        rope = _rope_from_hf(values, where)
        if "rope_base" in {f.name for f in dataclasses.fields(cfg_cls)}:
            ours.update(rope)
        elif (rope["rope_base"], rope["rope_scaling"]) != (10000.0, "none"):
            raise CheckpointError(
                f"{where}: rope_theta={rope['rope_base']!r} with {rope['rope_scaling']!r} "
                f"scaling is not supported; lmforge's {family} family rotates with base 10000 "
                "and no scaling"
            )
    if "ffn_dim" in ours and ours["ffn_dim"] is None:  # GPT-2's n_inner = None: 4 * n_embd
        ours["ffn_dim"] = 4 * ours["embed_dim"]
    if "activations" in table:
        activation = table["activations"].get(ours["activation"])
        if activation is None:
            raise CheckpointError(
                f"{where}: {table['config']['activation']}={ours['activation']!r} is not "
                f"supported; supported: {', '.join(table['activations'])}"
            )
        ours["activation"] = activation
    try:
        return cfg_cls(**ours, **table.get("fixed", {}))
    except (LmforgeError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None


# Our rotary fields <- the keys of their rope_parameters (rope_scaling in older files, where the
# base is the top-level rope_theta and "type" may stand for "rope_type").
_ROPE = {
    "rope_base": "rope_theta",
    "rope_scaling": "rope_type",
    "rope_factor": "factor",
    "rope_low_freq_factor": "low_freq_factor",
    "rope_high_freq_factor": "high_freq_factor",
    "rope_original_max_len": "original_max_position_embeddings",
}
# their rope_type -> our rope_scaling: the rules lmforge implements
_ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3"}


def _rope_from_hf(values: dict, where) -> dict:
    """Our rope_* fields from either form of their rotary settings; CheckpointError for a rule
    we do not implement (dynamic, yarn, longrope, ...) or per-layer-type rotary settings."""
    params = {**(values.get("rope_parameters") or {}), **(values.get("rope_scaling") or {})}
    if any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(
            f"{where}: rotary settings per layer type are not supported; lmforge gives every "
            "layer the same rope_parameters"
        )
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise CheckpointError(
            f"{where}: rope type {kind!r} is not supported; lmforge knows {', '.join(_ROPE_TYPES)}"
        )
    # GPT-NeoX's older files: rotary_pct (0.25 when absent there) and rotary_emb_base
    partial = values.get("partial_rotary_factor", values.get("rotary_pct", 1.0))
    if params.get("partial_rotary_factor", partial) != 1.0:
        raise CheckpointError(
            f"{where}: partial_rotary_factor is not supported; lmforge rotates whole heads"
        )
    defaults = {
        "rope_theta": values.get("rope_theta", values.get("rotary_emb_base", 10000.0)),
        "factor": 1.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": values.get("max_position_embeddings"),
    }
    ours = {mine: params.get(theirs, defaults.get(theirs)) for mine, theirs in _ROPE.items()}
    ours["rope_scaling"] = _ROPE_TYPES[kind]
    return ours


def _rope_to_hf(config) -> dict:
    """Their rotary settings for one of our configs: rope_theta + rope_scaling (what older
    transformers read) and rope_parameters (what transformers 5 writes)."""
    ours = {"rope_base": 10000.0, "rope_scaling": "none"}  # a family without rope fields (gpt)
    ours.update({mine: getattr(config, mine) for mine in _ROPE if hasattr(config, mine)})
    kind = {o: t for t, o in _ROPE_TYPES.items()}[ours["rope_scaling"]]
    used = {"rope_base", "rope_scaling"}
    if kind != "default":
        used.add("rope_factor")
    if kind == "llama3":
        used |= {"rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len"}
    params = {_ROPE[mine]: ours[mine] for mine in _ROPE if mine in used}
    params["rope_type"] = kind
    scaling = {k: v for k, v in params.items() if k != "rope_theta"} if kind != "default" else None
    params["partial_rotary_factor"] = 1.0  # whole heads (GPT-NeoX's default is 0.25)
    return {"rope_theta": ours["rope_base"], "rope_scaling": scaling, "rope_parameters": params}


def _architecture(model, table: dict) -> str | None:
    """The architecture a model of ours exports as: the first whose task class it is."""
    name = type(model).__name__
    return next((arch for arch, cls in table.get("tasks", {}).items() if cls == name), None)


def export_problems(config, model_type: str = "gpt2", model=None) -> list[str]:
    """Why a model of `config` (and, when given, the task `model`) cannot be written in
    `model_type`'s layout exactly: one reason per switch that layout cannot hold (empty when it
    exports)."""
    table = _table(model_type)
    problems = []
    checks = {**table.get("fixed", {}), "head_dim": None} if "fixed" in table else {}
    if "head_dim" in table["config"]:  # their config says it: any head_dim exports
        checks.pop("head_dim", None)
    for key, needed in checks.items():
        value = getattr(config, key)
        if key == "head_dim" and value in (None, config.embed_dim // config.num_heads):
            continue
        if value != needed and table.get("exports_too", {}).get(key, needed) != value:
            problems.append(f"{key}={value!r}, but {table['why'][key]}")
    if model is not None and not problems:  # a weight the layout has no place for (a head bias)
        names = _names(table, _architecture(model, table) or table["architecture"])
        placed = {k.format(i=i) for k in names for i in _layers(k, config.num_layers)}
        placed |= set(table.get("tied", {}))  # the weight it shares is written
        prefix = "backbone." if isinstance(model, Backbone) else ""
        state = {  # a LoRA layer (lmforge.layers.lora) is placed as the Linear it wraps
            prefix + k.replace(".base_layer.", "."): v
            for k, v in model.state_dict().items()
            if ".lora_" not in k
        }
        optional = table.get("optional", ())  # exact without it while it holds zeros
        homeless = sorted(
            k for k, v in state.items() if k not in placed and not (k in optional and not v.any())
        )
        if homeless and "tasks" in table and _architecture(model, table) is not None:
            problems.append(f"its weight {homeless[0]!r} has no place in the {model_type} layout")
    if model is not None and "tasks" in table:
        if _architecture(model, table) is None:
            family = model_types()[model_type]
            problems.append(f"a {type(model).__name__} has no Hugging Face {family} architecture")
        for key, needed in table.get("task_fixed", {}).items():
            value = getattr(model, key, needed)
            if value != needed:
                problems.append(f"{key}={value!r} ({table['why'][key]})")
    return problems


def _refuse(what: str, problems: list[str], fits: str) -> ConfigError:
    return ConfigError(
        f"{what} cannot be exported to Hugging Face: {'; '.join(problems)}; {fits}, or keep it "
        "in lmforge's format (--to lmforge)"
    )


def hf_config_from(config, model_type: str = "gpt2", tokenizer=None, model=None) -> dict:
    """The Hugging Face config.json dict of one of our configs (and task `model`, where the
    architecture depends on it); ConfigError listing every switch that has no counterpart
    there (e.g. rotary positions or untied heads for gpt2)."""
    table = _table(model_type)
    problems = export_problems(config, model_type, model)
    if problems:
        what = f"this {model_types()[model_type]} model ({model_type} layout)"
        raise _refuse(what, problems, table.get("fits", _FITS))
    activations = {}
    for theirs, ours in table.get("activations", {}).items():
        activations.setdefault(ours, theirs)  # the first name listed is the canonical one
    architecture = table["architecture"]
    if model is not None and "tasks" in table:
        architecture = _architecture(model, table)
    out = {"architectures": [architecture], "model_type": model_type}
    for mine, theirs in table["config"].items():
        value = getattr(config, mine)
        for their in _theirs(theirs):
            out[their] = activations[value] if mine == "activation" else value
    if table.get("rope"):
        out.update(_rope_to_hf(config))
    out.update(table.get("requires", {}))
    for field, roles in table.get("token_ids", {}).items():
        found = [getattr(tokenizer, f"{r}_id", None) if isinstance(r, str) else r for r in roles]
        out[field] = next((v for v in found if v is not None), None)
    out.update(table.get("written", {}))
    labels = getattr(model, "labels", None)
    if labels:
        out["id2label"] = dict(enumerate(labels))
        out["label2id"] = {label: i for i, label in enumerate(labels)}
    return out


# ---------------------------------------------------------------- weights


def _names(table: dict, architecture: str | None) -> dict:
    """Our key -> their key(s) for the backbone and the head of `architecture` (None: none)."""
    return {**table["weights"], **table.get("heads", {}).get(architecture, {})}


def _is_tied(config, mine: str, table: dict) -> bool:
    return mine in table.get("tied", {}) and getattr(config, "tie_embeddings", True)


def from_hf_state_dict(
    theirs: dict[str, Tensor],
    config,
    model_type: str = "gpt2",
    where="",
    architecture: str | None = None,
) -> dict:
    """Their weight names -> ours through HF_NAMES (renamed, transposed, q/k/v concatenated),
    for the backbone and the head of `architecture` (the table's own by default);
    CheckpointError when a weight is missing or left over.

    Example:
        model.load_state_dict(from_hf_state_dict(reference.state_dict(), model.config))
    """
    table = _table(model_type)
    architecture = architecture or table["architecture"]
    names = _names(table, architecture)
    for old, new in table.get("renames", {}).items():
        theirs = {k.replace(old, new): v for k, v in theirs.items()}
    prefix = table.get("base_prefix", "")
    if prefix and not any(k.startswith(prefix) for k in theirs):  # saved from the base model
        outside = {t for their in names.values() if their for t in _theirs(their)}
        outside = {t for t in outside if not t.startswith(prefix)}
        theirs = {(k if k in outside else prefix + k): v for k, v in theirs.items()}
    ours, missing, used = {}, [], set()
    for mine, their in names.items():
        if their is None:  # this architecture has no such weight
            continue
        for i in _layers(mine, config.num_layers):
            keys = [t.format(i=i) for t in _theirs(their)]
            if _is_tied(config, mine, table):
                used.update(keys)  # a tied weight is the other one, whatever the file holds
                continue
            absent = [k for k in keys if k not in theirs]
            if absent:
                if mine not in table.get("optional", ()):
                    missing.append(absent[0])
                continue
            used.update(keys)
            parts = [
                theirs[k].t() if mine in table.get("transpose", ()) else theirs[k] for k in keys
            ]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if mine in table.get("per_head", ()):  # (H, 3, D, ...) rows -> (3, H, D, ...)
                tensor = _regroup(tensor, config.num_heads, 3)
            ours[mine.format(i=i)] = tensor
    if missing:
        raise CheckpointError(
            f"{where}: the weights lack {missing[0]!r} ({len(missing)} missing in all); "
            "they do not match config.json"
        )
    ignored = tuple(table.get("ignored", ()))
    extra = sorted(k for k in theirs if k not in used and not k.endswith(ignored))
    if extra:
        raise CheckpointError(
            f"{where}: the weights hold {extra[0]!r} ({len(extra)} unexpected in all), which "
            "config.json does not describe"
        )
    for mine, other in table.get("tied", {}).items():
        if mine in names and _is_tied(config, mine, table):
            ours[mine] = ours[other]
    return ours


def to_hf_state_dict(model, model_type: str = "gpt2") -> dict[str, Tensor]:
    """Our model's weights under their names (transposed where they store (in, out), our fused
    qkv split back into query, key, value).

    A tied head appears under its name too, sharing the embedding's storage, as in
    transformers' own state_dict().

    Example:
        hf_model.load_state_dict(to_hf_state_dict(model, "gpt2"))
    """
    table = _table(model_type)
    hf_config_from(model.config, model_type, model=model)  # refuses models with no counterpart
    architecture = _architecture(model, table) if "tasks" in table else table["architecture"]
    mine = model.state_dict()
    if isinstance(model, Backbone):
        mine = {f"backbone.{k}": v for k, v in mine.items()}
    theirs = {}
    for key, their in _names(table, architecture).items():
        if their is None:
            continue
        for i in _layers(key, model.config.num_layers):
            tensor = mine.get(key.format(i=i))
            if tensor is None:
                tensor = _stand_in(model, mine, key.format(i=i))
            if key in table.get("per_head", ()):  # (3, H, D, ...) rows -> (H, 3, D, ...)
                tensor = _regroup(tensor, 3, model.config.num_heads)
            keys = [t.format(i=i) for t in _theirs(their)]
            for k, part in zip(keys, _split(tensor.detach(), key, len(keys), model.config, table)):
                theirs[k] = part.t().contiguous() if key in table.get("transpose", ()) else part
    if isinstance(model, Backbone) and table.get("base_prefix"):  # the bare base model's names
        theirs = {k.removeprefix(table["base_prefix"]): v for k, v in theirs.items()}
    return theirs


def _regroup(tensor: Tensor, outer: int, inner: int) -> Tensor:
    """Rows grouped (outer, inner, D) regrouped as (inner, outer, D): [q | k | v] <-> head by
    head, along dim 0 (weights and biases alike)."""
    rows = tensor.reshape(outer, inner, -1, *tensor.shape[1:])
    return rows.transpose(0, 1).reshape(tensor.shape)


def _split(tensor: Tensor, key: str, n: int, config, table: dict) -> tuple[Tensor, ...]:
    """A fused weight's parts along dim 0: equal, or sized by the table's `split`."""
    if n == 1:
        return (tensor,)
    fields = table.get("split", {}).get(key)
    if fields is None:
        return tensor.chunk(n, dim=0)
    head_dim = getattr(config, "head_dim", None) or config.embed_dim // config.num_heads
    return tensor.split([getattr(config, f) * head_dim for f in fields], dim=0)


def _stand_in(model, mine: dict[str, Tensor], key: str) -> Tensor:
    """What a weight we do not store holds, exactly (export_problems allows only these): a bias
    of a model without biases is zeros; a sinusoidal model's position table is its sinusoids."""
    if key.endswith(".bias"):
        weight = mine[key.removesuffix(".bias") + ".weight"]
        return torch.zeros(weight.shape[0], dtype=weight.dtype)
    if key == "backbone.embed.position.weight":
        return model.backbone.embed.sinusoid.clone()
    raise KeyError(key)


def hf_weights_file(folder: str | Path) -> Path:
    """The weights file of a Hugging Face folder, in the order read_hf_weights reads them
    (model.safetensors, its shard index, pytorch_model.bin, its shard index); CheckpointError
    when there is none."""
    folder = Path(folder)
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} has config.json but no weights (model.safetensors or pytorch_model.bin); "
        "put the weight files next to config.json"
    )


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_hf_weights(folder: str | Path) -> dict[str, Tensor]:
    """The tensors of a Hugging Face folder: model.safetensors (or its shards), else
    pytorch_model.bin (or its shards) read with weights_only=True; never unpickles code."""
    path = hf_weights_file(folder)
    reader = _read_safetensors if path.name.startswith("model.safetensors") else _read_bin
    if not path.name.endswith(".index.json"):
        return reader(path)
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path} is unreadable: download it again") from None
    state = {}
    for shard in shards:
        state.update(reader(path.parent / shard))
    return state


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - missing, truncated or foreign files are the user's
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_first_line(e)})"
        ) from None


def _read_bin(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} needs full pickle loading, which can run arbitrary code, so lmforge refuses "
            "it; convert it to model.safetensors with a tool you trust"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files are the user's
        raise CheckpointError(
            f"{path} is not a readable PyTorch weights file ({_first_line(e)})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no plain name -> tensor mapping; pass model weights")
    return state


# ---------------------------------------------------------------- whole folders


def load_hf_model(folder: str | Path):
    """Our model with the weights of a Hugging Face folder: the task class its architecture
    names in the family's HF_NAMES (GPTCausalLM for gpt2; BertTextClassifier,
    BertMaskedLM or BertBackbone for bert).

    Example:
        model = load_hf_model("hf/distilgpt2")       # config.json + model.safetensors
        logits = model(torch.tensor([[464, 3290]]))  # (1, 2, 50257)
    """
    folder = Path(folder)
    hf_config = read_hf_config(folder)
    model_type = hf_config["model_type"]
    table = _table(model_type)
    config = config_from_hf(hf_config, folder / "config.json")
    architecture = (hf_config.get("architectures") or [table["architecture"]])[0]
    tasks = table.get("tasks", {})
    if tasks and architecture not in tasks:  # a head we have no task for: the table's own
        architecture = table["architecture"]
    # a head their config unties where our layout ties it (a tied head trained apart, merged
    # from --lora-train-head): read from its own weight, into its own copy
    untie = hf_config.get("tie_word_embeddings") is False and _is_tied(config, "head.weight", table)
    reading = dataclasses.replace(config, tie_embeddings=False) if untie else config
    state = from_hf_state_dict(read_hf_weights(folder), reading, model_type, folder, architecture)
    family = model_types()[model_type]
    task_cls = family_classes(family)[1]  # the family's own task unless the table names one
    if architecture in tasks:
        task_cls = getattr(family_module(family), tasks[architecture])
    if issubclass(task_cls, Backbone):
        task = task_cls(config)
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    elif "num_classes" in inspect.signature(task_cls).parameters:  # a classifier: its labels
        id2label = hf_config.get("id2label") or {}
        labels = [id2label.get(str(i), str(i)) for i in range(len(state["head.bias"]))]
        task = task_cls(config, len(labels), labels=labels)
    else:
        task = task_cls(config)
    if untie:
        task.head.untie()
    try:
        missing, unexpected = task.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(
            f"{folder}: the weights do not fit config.json ({_first_line(e)})"
        ) from None
    optional = tuple(table.get("optional", ())) + tuple(table.get("tied", ()))
    missing = [k for k in missing if not k.endswith(optional)]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights missing {missing[:2]}, unexpected {unexpected[:2]}"
        )
    return task


def write_hf_folder(model, tokenizer, folder: str | Path) -> None:
    """Write config.json, generation_config.json (decoders), model.safetensors and the tokenizer
    files that transformers' from_pretrained and pipeline() read.

    GPT models go to GPT-2's layout (GPT2LMHeadModel), rotary ones to GPT-NeoX's; Llama-style
    ones to Llama, Mistral, Qwen2 or Qwen3 (whichever their switches name); BERT ones to
    BertModel, BertForMaskedLM or BertForSequenceClassification. ConfigError lists every reason
    the model or tokenizer cannot be written exactly, before anything is written.
    """
    from lmforge.run_folder import save_tensors

    model_type = export_type(model)
    problems = _model_problems(model, model_type)
    hf_tokenizer = _hf_tokenizer(tokenizer)
    if hf_tokenizer is None:
        problems.append(
            f"a {tokenizer.kind} tokenizer has no Hugging Face form (train with --tokenizer char, "
            "bpe, wordpiece, unigram or word)"
        )
    if problems:
        fits = _table(model_type).get("fits", _FITS) if model_type else _FITS
        raise _refuse(f"this {model.family} model ({type(model).__name__})", problems, fits)
    table = _table(model_type)
    config = hf_config_from(model.config, model_type, tokenizer, model=model)
    state = to_hf_state_dict(model, model_type)
    head = getattr(model, "head", None)
    if getattr(head, "is_tied", True) is False and _is_tied(model.config, "head.weight", table):
        config["tie_word_embeddings"] = False  # a tied head trained apart (--lora-train-head)
    for mine in table.get("tied", {}):  # transformers re-ties it; safetensors refuses sharing
        their = table["weights"].get(mine)
        if (
            their is not None
            and _is_tied(model.config, mine, table)
            and config.get("tie_word_embeddings", True)
        ):
            state.pop(their)
    if table.get("packs_tokens"):
        hf_tokenizer = _with_packing(hf_tokenizer, tokenizer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in state.items()}
    save_tensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    _write_json(folder / "config.json", config)
    if hasattr(model, "step"):  # a decoder: what generate() starts and stops at
        generation = {
            k: config[k] for k in ("bos_token_id", "eos_token_id") if config.get(k) is not None
        }
        if len(tokenizer.eos_ids) > 1:  # generation stops at any of them
            generation["eos_token_id"] = list(tokenizer.eos_ids)
        _write_json(folder / "generation_config.json", generation)
    _write_hf_tokenizer(tokenizer, hf_tokenizer, folder, model.config.max_seq_len)


_FITS = "train a gpt preset (e.g. --preset gpt-baby)"


def export_type(model) -> str | None:
    """The model_type a model exports as: the first of its family's HF_NAMES whose switches it
    matches (llama -> llama, mistral, qwen2 or qwen3), else the first (gpt -> gpt2), which then
    names what does not fit; None for a family without any."""
    types = [t for t, f in model_types().items() if f == model.family]
    fits = (t for t in types if not export_problems(model.config, t, model))
    return next(fits, types[0] if types else None)


def _model_problems(model, model_type: str | None) -> list[str]:
    if model_type is not None:
        return export_problems(model.config, model_type, model)
    exporting = ", ".join(f"{f} as {t}" for t, f in model_types().items())
    return [
        f"a {model.family} model has no Hugging Face architecture (families that export: "
        f"{exporting})"
    ]


def _hf_tokenizer(tokenizer):
    """The `tokenizers.Tokenizer` that is tokenizer.json for our tokenizer, or None."""
    if tokenizer.kind == "char":
        return tokenizer.to_hf_tokenizer()
    return getattr(tokenizer, "tokenizer", None)  # the library kinds hold one


def _with_packing(library, tokenizer):
    """A copy of `library` that adds BERT's `[CLS] a [SEP]` (`[CLS] a [SEP] b [SEP]`) itself, as
    a BERT tokenizer on the hub does; our packer adds them in lmforge."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if bos is None or eos is None:
        return library
    library = Tokenizer.from_str(library.to_str())
    library.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, tokenizer.bos_id), (eos, tokenizer.eos_id)],
    )
    return library


def _write_hf_tokenizer(tokenizer, library, folder: Path, max_len: int) -> None:
    library.save(str(folder / "tokenizer.json"))
    special = {f"{role}_token": t for role, t in tokenizer.special_tokens().items() if t}
    if tokenizer.kind == "char":  # a one-character unknown token is text there, not special
        special = {k: t for k, t in special.items() if len(t) > 1}
    settings = {
        "tokenizer_class": "GPT2Tokenizer"
        if tokenizer.kind == "bpe"
        else "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if tokenizer.kind == "bpe":
        library.model.save(str(folder))  # vocab.json + merges.txt, for GPT-2's slow tokenizer
        settings["add_prefix_space"] = False
    if tokenizer.add_bos_token:
        settings["add_bos_token"] = True
    if tokenizer.chat_template:
        settings["chat_template"] = tokenizer.chat_template
    _write_json(folder / "tokenizer_config.json", settings)
    _write_json(folder / "special_tokens_map.json", special)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
