"""The Python entry points behind `lmforge.load`, `lmforge.load_tokenizer`, `generate_text`.

They accept what the CLI accepts: a run folder, a Hugging Face folder or name (distilgpt2), a
preset name, or (for tokenizers) a tokenizer folder.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge import run_folder as ckpt
from lmforge.errors import ConfigError
from lmforge.presets import from_preset


def load(
    run_or_preset: str | Path,
    device: str | None = None,
    quantize: str | None = None,
    adapter: str | Path | None = None,
):
    """The task model of a run folder, a Hugging Face folder or name, or a preset, in eval mode.

    Names resolve as in `lmforge.presets.find_checkpoint` (LMFORGE_MODELS_DIR, the Hugging Face
    cache, a download); a preset with no weights anywhere (gpt-baby) gets random weights.
    `quantize="int8"`: int8 weights with a scale per output channel in every linear layer and
    the output head (`model.int8_kernel` says which matmul runs). A LoRA run comes with its
    adapters; `adapter=DIR` adds a PEFT LoRA adapter folder (save_pretrained's, or a run's
    adapter/) on top of the model's own weights.

    Example:
        model = lmforge.load("runs/shakespeare")  # or "distilgpt2", "path/to/hf-folder"
        logits = model(torch.tensor([[5, 6, 7]]))  # (1, 3, vocab_size)
        tuned = lmforge.load("hf/smollm2-135m", adapter="peft-out")  # base + PEFT adapter
    """
    return from_preset(run_or_preset, device=device, quantize=quantize, adapter=adapter)


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


# what a run's model does, by the methods it has: generate (step), label texts, fill in masks
KINDS = {
    "causal-lm": "a causal language model",
    "classify": "a text classifier",
    "mlm": "a masked language model",
}


def task_kind(model) -> str:
    """ "causal-lm", "classify" or "mlm": what `model` does (a run's task, also for Hugging
    Face folders, whose config.json has no task)."""
    if hasattr(model, "init_state") and hasattr(model, "step"):
        return "causal-lm"
    return "classify" if hasattr(model, "num_classes") else "mlm"


@dataclass
class LoadedRun:
    """A run folder, Hugging Face folder or name, loaded the one way every verb loads it.

    Args:
        config: our config.json ({} for a Hugging Face folder).
        kind: what the model does: "causal-lm", "classify" or "mlm" (see `task_kind`).
    """

    name: str  # as the user gave it
    folder: Path
    model: torch.nn.Module
    tokenizer: object
    config: dict
    kind: str

    @property
    def data(self) -> dict | None:
        """What the run was trained on (prepared folder, block_size, batching); None for a
        converted run or a Hugging Face folder, which bring no data of their own."""
        return self.config.get("data")

    @property
    def block_size(self) -> int:
        """Tokens per example: the run's training block size, else the model's context."""
        if self.data and self.data.get("block_size"):
            return int(self.data["block_size"])
        return int(self.model.config.max_seq_len)

    def require(self, kind: str, by: str) -> None:
        """ConfigError, naming what the run is and the verb that fits it, unless it is `kind`.

        Args:
            by: what needs the kind, as the message names it ("`lmforge sample`").
        """
        if self.kind == kind:
            return
        what = f"{self.name} is {KINDS[self.kind]}"
        if self.kind == "classify":
            labels = ", ".join(getattr(self.model, "labels", None) or []) or "its classes"
            use = f'it labels texts ({labels}): use `lmforge predict {self.name} "some text"`'
        elif self.kind == "mlm":
            use = (
                f"it fills in masked tokens: evaluate it with `lmforge eval {self.name}` or "
                f"fine-tune a classifier from it with `lmforge train --task classify "
                f"--init-from {self.name}`"
            )
        else:
            use = f"it continues text: use `lmforge sample {self.name}`"
        raise ConfigError(f"{what}, and {by} needs {KINDS[kind]}; {use}")


def load_run(
    run: str | Path,
    device: str = "auto",
    unknown_token: str | None = None,
    quantize: str | None = None,
    adapter: str | Path | None = None,
):
    """Load a run folder, Hugging Face folder or name as a LoadedRun, the model on the picked
    device. `unknown_token` maps characters a char tokenizer has not seen to that one of its
    own (see CharTokenizer.with_unknown_token); `quantize="int8"` gives the model int8 weights
    (lmforge.layers.quant; a run `lmforge quantize` wrote has them already); `adapter` adds a
    PEFT LoRA adapter folder (lmforge.interop.peft).

    Example:
        run = load_run("runs/wine")
        run.kind, run.tokenizer.vocab_size  # ("causal-lm", 400)
    """
    from lmforge.device import pick_device
    from lmforge.layers.quant import check_kind, quantize_
    from lmforge.presets import check_tokenizer_fits, find_checkpoint, is_hf_folder, load_folder

    dev = pick_device(device)
    if quantize is not None:
        check_kind(quantize)  # before a download
    folder = find_checkpoint(run)
    if folder is None:
        raise ConfigError(
            f"preset {str(run)!r} has random weights and no tokenizer; train a run with it first "
            f"(lmforge train --preset {run}) and use the run folder"
        )
    model = load_folder(folder)
    if adapter is not None:
        from lmforge.interop.peft import load_adapter

        load_adapter(model, adapter)
        model.eval()
    tokenizer = with_unknown_token(load_tokenizer(folder), unknown_token)
    check_tokenizer_fits(tokenizer, model, folder)
    config = {} if is_hf_folder(folder) else ckpt.read_config(folder)
    model = model.to(dev)
    if quantize is not None:
        quantize_(model, quantize)
    return LoadedRun(str(run), folder, model, tokenizer, config, task_kind(model))


def with_unknown_token(tokenizer, token: str | None):
    """The tokenizer with unseen characters mapped to `token` (char tokenizers only)."""
    if token is None:
        return tokenizer
    if not hasattr(tokenizer, "with_unknown_token"):
        raise ConfigError(
            f"--unknown-token applies to char tokenizers; this {tokenizer.kind} tokenizer "
            "handles unseen text itself: drop --unknown-token"
        )
    return tokenizer.with_unknown_token(token)


def load_for_sampling(run: str | Path, device: str = "auto", quantize: str | None = None):
    """(model on the picked device, tokenizer) of a run folder, Hugging Face folder or name."""
    loaded = load_run(run, device, quantize=quantize)
    return loaded.model, loaded.tokenizer


@torch.inference_mode()
def generate_text(run_or_model, prompt: str, tokenizer=None, **options) -> str:
    """Generate a continuation of `prompt` and return it as one string.

    A run or name loads with `device=` and `quantize=` among the options (quantize="int8").

    Example:
        text = lmforge.generate_text("runs/shakespeare", "ROMEO:", max_new_tokens=200, seed=1)
    """
    from lmforge.generation.generate import generate_text as _stream

    if isinstance(run_or_model, (str, Path)):
        device, quantize = options.pop("device", "auto"), options.pop("quantize", None)
        run = load_run(run_or_model, device, quantize=quantize)
        run.require("causal-lm", "generate_text()")
        model, tok = run.model, run.tokenizer
    else:
        model, tok = run_or_model, tokenizer
        if options.get("quantize") is not None:  # the caller's model, in place
            from lmforge.layers.quant import quantize_

            quantize_(model, options.pop("quantize"))
        options.pop("quantize", None)
    return "".join(_stream(model, tok, prompt, **options))


def save_quantized(
    source: str | Path, out: str | Path, kind: str = "int8", overwrite: bool = False
) -> Path:
    """Write `source` (run folder, Hugging Face folder or name) as a new run folder `out` with
    int8 weights: model.safetensors holds each linear layer's int8 weight and float32 scale per
    output channel, config.json says `"quantize": "int8"`, the tokenizer is copied. Every verb
    that loads runs loads it. Written under a temporary name and renamed: complete or absent.

    Example:
        save_quantized("runs/shakespeare", "runs/shakespeare-int8")
        model = lmforge.load("runs/shakespeare-int8")  # int8 weights, as quantized in memory
    """
    from lmforge.layers.quant import check_kind, quantize_

    check_kind(kind)
    ckpt.check_new_folder(out, None, overwrite)  # before the slow part
    loaded = load_run(source, "cpu")
    if loaded.config.get("quantize"):
        origin = loaded.config.get("quantized_from", "the run it came from")
        raise ConfigError(
            f"{source} is already quantized ({loaded.config['quantize']}); quantize {origin}"
        )
    config = loaded.config or run_config(loaded.model, str(loaded.folder))
    config = {**config, "quantize": kind, "quantized_from": str(loaded.folder)}
    config.pop("lora", None)  # quantize_ merges a LoRA run's adapters into its weights
    config.pop("lmforge_version", None)  # write_config stamps the running version
    quantize_(loaded.model, kind)

    def write(tmp: Path) -> None:
        ckpt.write_config(tmp, config)
        ckpt.save_weights(loaded.model, tmp / "model.safetensors")
        loaded.tokenizer.save(tmp / "tokenizer")

    return ckpt.write_folder(out, write, source=loaded.folder, overwrite=overwrite)


# ---------------------------------------------------------------- writing runs


def write_lmforge_folder(model, tokenizer, folder: str | Path, source: str = "") -> None:
    """Write our run-folder layout: config.json ("family"), model.safetensors, tokenizer/."""
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


def convert(
    source: str | Path,
    to: str,
    out: str | Path,
    overwrite: bool = False,
    merge_lora: bool = False,
    adapter: str | Path | None = None,
) -> Path:
    """Write the model and tokenizer of `source` (run folder, Hugging Face folder or name) to a
    new folder `out` in format `to`: "hf" (transformers loads it) or "lmforge" (a run folder).
    `merge_lora`: fold a LoRA run's adapters (or the PEFT `adapter` folder added to `source`)
    into plain weights, which a LoRA model needs for either format.

    The folder is written under a temporary name and renamed, so it is complete or absent.

    Example:
        convert("runs/eli5", "hf", "export/eli5")
        transformers.AutoModelForCausalLM.from_pretrained("export/eli5")
        convert("runs/eli5-lora", "hf", "export/eli5-merged", merge_lora=True)
    """
    from lmforge.interop.hf import FORMATS, write_hf_folder
    from lmforge.layers.lora import lora_layers, merge_lora_
    from lmforge.presets import check_tokenizer_fits, find_checkpoint, load_folder
    from lmforge.tokenizers.chat import saved_chat_template

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
    if adapter is not None:
        from lmforge.interop.peft import load_adapter

        load_adapter(model, adapter)
    if merge_lora and not lora_layers(model):
        raise ConfigError(
            f"--merge-lora: {source} has no LoRA adapter (it was not trained with --lora-rank): "
            "drop --merge-lora, or add a PEFT adapter folder with --adapter DIR"
        )
    if lora_layers(model) and not merge_lora:
        raise ConfigError(
            f"{source} has a LoRA adapter: pass --merge-lora to write merged weights (a LoRA "
            "run's adapter/ folder alone is what PEFT loads)"
        )
    merge_lora_(model)
    tokenizer = load_tokenizer(folder)
    check_tokenizer_fits(tokenizer, model, folder)
    template = saved_chat_template(tokenizer, folder)  # in tokenizer_config.json, for one
    tokenizer.chat_template = template.source if template is not None else None

    def write(tmp: Path) -> None:
        if to == "hf":
            write_hf_folder(model, tokenizer, tmp)
        else:
            write_lmforge_folder(model, tokenizer, tmp, source=str(folder))

    return ckpt.write_folder(out, write, source=folder, overwrite=overwrite)
