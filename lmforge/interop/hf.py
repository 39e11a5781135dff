"""Read and write Hugging Face model folders: config.json, weights and tokenizer files.

A family's literal HF_NAMES table (in its model file) maps their config fields and weight names
onto ours; this module only applies it. Weights are read without running pickled code:
model.safetensors, or pytorch_model.bin through torch.load(weights_only=True), and nothing else.
"""

import dataclasses
import importlib
import json
import pickle
from pathlib import Path

import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError, LmforgeError

# Hugging Face model_type -> our family; the family file holds HF_NAMES[model_type].
MODEL_TYPES = {"gpt2": "gpt"}
# Every model_type lmforge.load reads: bert folders go to models/bert.py's own loader, whose
# table concatenates q, k and v (see presets.load_folder).
LOADABLE = (*MODEL_TYPES, "bert")
FORMATS = ("hf", "lmforge")
# Causal-mask buffers that old GPT-2 checkpoints store; our attention builds its own mask.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def _table(model_type: str) -> dict:
    from lmforge.presets import FAMILIES

    module = FAMILIES[MODEL_TYPES[model_type]][0]
    return importlib.import_module(module).HF_NAMES[model_type]


def _layers(key: str, num_layers: int) -> range:
    return range(num_layers) if "{i}" in key else range(1)


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
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{folder}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(LOADABLE)}"
        )
    return config


def config_from_hf(hf_config: dict, where: str | Path = "config.json"):
    """Our family config (GPTConfig for gpt2) from a Hugging Face config.json dict."""
    from lmforge.presets import family_classes

    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(LOADABLE)}"
        )
    table = _table(model_type)
    values = {**table["defaults"], **hf_config}
    for key, supported in table["requires"].items():
        if values.get(key, supported) != supported:
            raise CheckpointError(
                f"{where}: {key}={values[key]!r} is not supported; lmforge's "
                f"{MODEL_TYPES[model_type]} family loads only {key}={supported!r}"
            )
    ours = {mine: values.get(theirs) for mine, theirs in table["config"].items()}
    if ours.get("ffn_dim") is None:  # n_inner = None means 4 * n_embd
        ours["ffn_dim"] = 4 * ours["embed_dim"]
    activation = table["activations"].get(ours["activation"])
    if activation is None:
        raise CheckpointError(
            f"{where}: activation_function={ours['activation']!r} is not supported; "
            f"supported: {', '.join(table['activations'])}"
        )
    ours["activation"] = activation
    cfg_cls, _ = family_classes(MODEL_TYPES[model_type])
    try:
        return cfg_cls(**ours, **table["fixed"])
    except (LmforgeError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def export_problems(config, model_type: str = "gpt2") -> list[str]:
    """Why a model of `config` cannot be written in `model_type`'s layout exactly: one reason
    per switch that layout cannot hold (empty when it exports)."""
    table = _table(model_type)
    problems = []
    for key, needed in {**table["fixed"], "head_dim": None}.items():
        value = getattr(config, key)
        if key == "head_dim" and value in (None, config.embed_dim // config.num_heads):
            continue
        if value != needed and table["exports_too"].get(key, needed) != value:
            problems.append(f"{key}={value!r}, but {table['why'][key]}")
    return problems


# Per family: how to train a model that exports, for the end of a refusal.
_FITS = {
    "gpt": "train one with GPT-2's switches (e.g. --preset gpt-baby)",
    "bert": "train the classifier with --extra-layers 0",
}


def _refuse(what: str, problems: list[str], family: str = "gpt") -> ConfigError:
    fits = _FITS.get(family, "train a gpt preset (e.g. --preset gpt-baby)")
    return ConfigError(
        f"{what} cannot be exported to Hugging Face: {'; '.join(problems)}; {fits}, or keep it "
        "in lmforge's format (--to lmforge)"
    )


def hf_config_from(config, model_type: str = "gpt2", tokenizer=None) -> dict:
    """The Hugging Face config.json dict of one of our configs; ConfigError listing every switch
    that has no counterpart there (e.g. rotary positions or untied heads for gpt2)."""
    table = _table(model_type)
    problems = export_problems(config, model_type)
    if problems:
        raise _refuse(f"this gpt model ({model_type} layout)", problems)
    activations = {}
    for theirs, ours in table["activations"].items():
        activations.setdefault(ours, theirs)  # the first name listed is the canonical one
    out = {"architectures": [table["architecture"]], "model_type": model_type}
    for mine, theirs in table["config"].items():
        value = getattr(config, mine)
        out[theirs] = activations[value] if mine == "activation" else value
    out.update(table["requires"])
    eos = getattr(tokenizer, "eos_id", None)
    bos = getattr(tokenizer, "bos_id", None)
    out.update(bos_token_id=bos if bos is not None else eos, eos_token_id=eos, dtype="float32")
    return out


# ---------------------------------------------------------------- weights


def from_hf_state_dict(
    theirs: dict[str, Tensor], config, model_type: str = "gpt2", where=""
) -> dict:
    """Their weight names -> ours through HF_NAMES (Conv1D weights transposed); CheckpointError
    when a weight is missing or left over."""
    table = _table(model_type)
    prefix = table["base_prefix"]
    head_key = table["weights"]["head.weight"]
    if not any(k.startswith(prefix) for k in theirs):  # saved from the bare base model
        theirs = {(k if k == head_key else prefix + k): v for k, v in theirs.items()}
    ours, missing, used = {}, [], set()
    for mine, their in table["weights"].items():
        for i in _layers(mine, config.num_layers):
            key = their.format(i=i)
            if mine == "head.weight" and config.tie_embeddings:
                used.add(key)  # a tied head is the token embedding, whatever the file holds
                continue
            if key not in theirs:
                missing.append(key)
                continue
            used.add(key)
            tensor = theirs[key]
            ours[mine.format(i=i)] = tensor.t() if mine in table["transpose"] else tensor
    if missing:
        raise CheckpointError(
            f"{where}: the weights lack {missing[0]!r} ({len(missing)} missing in all); "
            "they do not match config.json"
        )
    extra = sorted(k for k in theirs if k not in used and not k.endswith(_BUFFERS))
    if extra:
        raise CheckpointError(
            f"{where}: the weights hold {extra[0]!r} ({len(extra)} unexpected in all), which "
            "config.json does not describe"
        )
    if config.tie_embeddings:
        ours["head.weight"] = ours["backbone.embed.token.weight"]
    return ours


def to_hf_state_dict(model, model_type: str = "gpt2") -> dict[str, Tensor]:
    """Our model's weights under their names (Conv1D weights transposed, contiguous).

    The tied head appears as lm_head.weight too, sharing the embedding's storage, as in
    transformers' own state_dict().

    Example:
        hf_model.load_state_dict(to_hf_state_dict(model, "gpt2"))
    """
    table = _table(model_type)
    hf_config_from(model.config, model_type)  # refuses models with no counterpart
    mine = model.state_dict()
    theirs = {}
    for key, their in table["weights"].items():
        for i in _layers(key, model.config.num_layers):
            tensor = mine.get(key.format(i=i))
            if tensor is None:
                tensor = _stand_in(model, mine, key.format(i=i))
            tensor = tensor.detach()
            theirs[their.format(i=i)] = (
                tensor.t().contiguous() if key in table["transpose"] else tensor
            )
    return theirs


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
    """Our task model (GPTCausalLM for gpt2) with the weights of a Hugging Face folder.

    Example:
        model = load_hf_model("hf/distilgpt2")       # config.json + model.safetensors
        logits = model(torch.tensor([[464, 3290]]))  # (1, 2, 50257)
    """
    from lmforge.presets import family_classes

    folder = Path(folder)
    hf_config = read_hf_config(folder)
    config = config_from_hf(hf_config, folder)
    state = from_hf_state_dict(read_hf_weights(folder), config, hf_config["model_type"], folder)
    _, task_cls = family_classes(MODEL_TYPES[hf_config["model_type"]])
    task = task_cls(config)
    try:
        task.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{folder}: the weights do not fit config.json ({_first_line(e)})"
        ) from None
    return task


def write_hf_folder(model, tokenizer, folder: str | Path) -> None:
    """Write config.json, generation_config.json (decoders), model.safetensors and the tokenizer
    files that transformers' from_pretrained and pipeline() read.

    GPT models go to GPT-2's layout (GPT2LMHeadModel), BERT ones to BertModel,
    BertForMaskedLM or BertForSequenceClassification. ConfigError lists every reason the model
    or tokenizer cannot be written exactly, before anything is written.
    """
    from lmforge.run_folder import save_tensors

    problems = _model_problems(model)
    hf_tokenizer = _hf_tokenizer(tokenizer)
    if hf_tokenizer is None:
        problems.append(
            f"a {tokenizer.kind} tokenizer has no Hugging Face form (train with --tokenizer char, "
            "bpe, wordpiece, unigram or word)"
        )
    if problems:
        raise _refuse(f"this {model.family} model ({type(model).__name__})", problems, model.family)
    if model.family == "bert":
        from lmforge.models import bert

        config, state = bert.hf_config_from(model, tokenizer), bert.to_hf_state_dict(model)
        hf_tokenizer = _with_packing(hf_tokenizer, tokenizer)
    else:
        config = hf_config_from(model.config, "gpt2", tokenizer)
        state = to_hf_state_dict(model, "gpt2")
        if model.config.tie_embeddings:  # transformers re-ties it; safetensors refuses sharing
            state.pop(_table("gpt2")["weights"]["head.weight"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in state.items()}
    save_tensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    _write_json(folder / "config.json", config)
    if model.family == "gpt":
        generation = {
            k: config[k] for k in ("bos_token_id", "eos_token_id") if config.get(k) is not None
        }
        _write_json(folder / "generation_config.json", generation)
    _write_hf_tokenizer(tokenizer, hf_tokenizer, folder, model.config.max_seq_len)


def _model_problems(model) -> list[str]:
    if model.family == "gpt":
        return export_problems(model.config, "gpt2")
    if model.family == "bert":
        from lmforge.models import bert

        return bert.hf_export_problems(model)
    return [
        f"a {model.family} model has no Hugging Face architecture (families that export: gpt "
        "as GPT-2, bert as BERT)"
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
    _write_json(folder / "tokenizer_config.json", settings)
    _write_json(folder / "special_tokens_map.json", special)


def write_lmforge_folder(model, tokenizer, folder: str | Path, source: str = "") -> None:
    """Write our run-folder layout: config.json ("family"), model.safetensors, tokenizer/."""
    from lmforge import run_folder as ckpt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.write_config(folder, run_config(model, source))
    ckpt.save_weights(model, folder / "model.safetensors")
    tokenizer.save(folder / "tokenizer")


def run_config(model, source: str = "") -> dict:
    """A run folder's config.json entries for a model that has none (a Hugging Face folder's)."""
    config = {"family": model.family, "model": dataclasses.asdict(model.config), "source": source}
    task = _task_spec(model)
    if task is not None:  # a BERT classifier or masked LM stays one (presets.build_task)
        config["task"] = task
    return config


def _task_spec(model) -> dict | None:
    """The run config's "task" entry (as training writes it) of a non-default task, or None."""
    from lmforge.models.bert import BertMaskedLM, BertTextClassifier

    if isinstance(model, BertTextClassifier):
        return {
            "kind": "classify",
            "num_classes": model.num_classes,
            "extra_layers": model.extra_layers,
            "labels": list(model.labels),
        }
    if isinstance(model, BertMaskedLM):
        return {"kind": "mlm"}
    return None


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(source: str | Path, to: str, out: str | Path, overwrite: bool = False) -> Path:
    """Write the model and tokenizer of `source` (run folder, Hugging Face folder or name) to a
    new folder `out` in format `to`: "hf" (transformers loads it) or "lmforge" (a run folder).

    The folder is written under a temporary name and renamed, so it is complete or absent.

    Example:
        convert("runs/eli5", "hf", "export/eli5")
        transformers.AutoModelForCausalLM.from_pretrained("export/eli5")
    """
    from lmforge import run_folder as ckpt
    from lmforge.api import load_tokenizer
    from lmforge.presets import check_tokenizer_fits, find_checkpoint, load_folder

    if to not in FORMATS:
        raise ConfigError(f"unknown format --to {to!r}; use one of {', '.join(FORMATS)}")
    folder = find_checkpoint(source)
    if folder is None:
        raise ConfigError(
            f"preset {str(source)!r} has random weights and no tokenizer; convert a run folder "
            "or a model folder"
        )
    ckpt.check_new_folder(out, folder, overwrite)  # before the slow part
    model = load_folder(folder)
    if getattr(model, "quantized", None):
        raise ConfigError(
            f"{folder} holds {model.quantized} weights (lmforge quantize), which convert does not "
            "write; convert the run it was quantized from"
        )
    tokenizer = load_tokenizer(folder)
    check_tokenizer_fits(tokenizer, model, folder)

    def write(tmp: Path) -> None:
        if to == "hf":
            write_hf_folder(model, tokenizer, tmp)
        else:
            write_lmforge_folder(model, tokenizer, tmp, source=str(folder))

    return ckpt.write_folder(out, write, source=folder, overwrite=overwrite)
