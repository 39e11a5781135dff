"""The one training loop: `train()` sets a run up, `fit()` drives it, `train_step()` is one step.

Any task trains here through `task.loss(batch)`. Everything that decides which batch comes next
(batcher position, RNG states, step, tokens, elapsed time) is saved in state.pt, so N steps +
resume + N steps equals 2N straight steps bit for bit (for step- and token-based budgets).
What a run reads is in run_data.py, pretrained starts in pretrained.py, the optimizer in optim.py.
"""

import dataclasses
import json
import logging
import math
import random
import signal
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from dataclasses import field as option
from pathlib import Path

import numpy as np
import torch

from lmforge import device as devices
from lmforge import progress
from lmforge import run_folder as ckpt
from lmforge.data.batching import (
    ConsecutiveBatcher,
    EpochBatcher,
    WindowBatcher,
    iterate_in_order,
)
from lmforge.data.windows import IGNORE
from lmforge.errors import CheckpointError, ConfigError, DataError, LmforgeError
from lmforge.evaluate.metrics import constant_predictions
from lmforge.files import write_atomic
from lmforge.training import distributed, optim
from lmforge.training.pretrained import (
    _init_from_options,
    _pretrained_start,
    load_pretrained,
)
from lmforge.training.run_data import (  # labelled_split, make_task_examples: old import path
    SPLITS,
    labelled_split,  # noqa: F401
    load_data,
    make_examples,
    make_task_examples,  # noqa: F401
    task_spec,
)
from lmforge.training.schedules import SCHEDULES, WARMUP_SHARE, lr_at, parse_duration

log = logging.getLogger(__name__)

BUDGETS = ("max_steps", "epochs", "max_tokens", "max_time")  # the first one spent ends a run
BATCHINGS = ("auto", "windows", "epochs", "documents", "blocks")
TASKS = ("causal-lm", "classify", "mlm")


class TrainingDiverged(LmforgeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Options of `lmforge train` / `lmforge.train()`; a preset's `train` dict sets defaults."""

    data: str = option(
        default="python-stdlib", metadata={"help": "raw source, dataset name or prepared folder"}
    )
    tokenizer: str = option(default="char", metadata={"help": "tokenizer kind or folder"})
    vocab_size: int | None = option(default=None, metadata={"help": "for trained tokenizers"})
    field: str | None = option(
        default=None, metadata={"help": "CSV column / JSON field / template"}
    )
    val_fraction: float = option(default=0.1, metadata={"help": "held-out share of the data"})
    preset: str = option(default="gpt-baby", metadata={"help": "model preset (`lmforge presets`)"})
    init_from: str | None = option(
        default=None,
        metadata={
            "help": "fine-tune a pretrained model: run folder, Hugging Face folder or name "
            "(distilgpt2); its tokenizer is used, --preset gives only training defaults"
        },
    )
    task: str | None = option(
        default=None,
        metadata={
            "help": "causal-lm|classify|mlm (default: the family's own: causal-lm for gpt, "
            "classify for bert)"
        },
    )
    label_field: str | None = option(
        default=None, metadata={"help": "CSV column / JSON field with the class labels"}
    )
    normalize_labels: bool = option(
        default=False,
        metadata={
            "help": "strip and lower-case labels, so 'Positive ' and 'positive' are one class"
        },
    )
    num_classes: int | None = option(
        default=None, metadata={"help": "classify: number of classes (must match the data)"}
    )
    extra_layers: int = option(
        default=0, metadata={"help": "classify: new encoder layers between backbone and head"}
    )
    freeze_backbone: bool = option(
        default=False, metadata={"help": "classify: train only the new layers and the head"}
    )
    split: str = option(
        default="test",
        metadata={
            "help": "split to evaluate on: test (the data's own test split, else the held-out "
            "fraction) or train"
        },
    )
    out: str = option(
        default="runs/latest",
        metadata={
            "help": "run folder",
            "default_help": "a new runs/PRESET-TIMESTAMP each run; with --resume, runs/latest",
        },
    )
    batching: str = option(
        default="auto",
        metadata={
            "help": "windows (random), epochs (non-overlapping, reshuffled), documents (one per "
            "example, padded), blocks (concatenate and chunk); auto picks"
        },
    )
    batch_size: int = option(default=12, metadata={"help": "examples per micro-batch"})
    block_size: int | None = option(
        default=None, metadata={"help": "tokens per example (default: the model's context)"}
    )
    grad_accum: int = option(default=1, metadata={"help": "micro-batches per optimizer step"})
    global_batch_size: int | None = option(
        default=None,
        metadata={"help": "examples per optimizer step over all processes (sets --grad-accum)"},
    )
    strategy: str = option(default="ddp", metadata={"help": "ddp|fsdp under torchrun"})
    backend: str | None = option(
        default=None, metadata={"help": "gloo|nccl (default: nccl on CUDA, gloo on CPU)"}
    )
    dist_timeout: float = option(
        default=120.0, metadata={"help": "seconds to wait for other processes before failing"}
    )
    max_steps: int | None = option(default=None, metadata={"help": "total optimizer steps"})
    epochs: float | None = option(default=None, metadata={"help": "passes over the train split"})
    max_tokens: int | None = option(default=None, metadata={"help": "total training tokens"})
    max_time: str | None = option(default=None, metadata={"help": "wall-time budget: 90s, 10m"})
    lr: float = option(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float | None = option(default=None, metadata={"help": "floor (default lr/10)"})
    warmup_steps: int = option(default=100, metadata={"help": "linear warmup steps"})
    schedule: str = option(default="cosine", metadata={"help": "|".join(SCHEDULES)})
    weight_decay: float = option(
        default=0.1, metadata={"help": "AdamW decay (not on norms, biases, embeddings)"}
    )
    optimizer: str = option(
        default="adamw",
        metadata={"help": "adamw, or muon (Muon for hidden matrices, AdamW for the rest)"},
    )
    beta1: float = 0.9
    beta2: float = option(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = option(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    precision: str = option(default="auto", metadata={"help": "auto|fp32|bf16"})
    compile: bool = option(default=False, metadata={"help": "torch.compile the model"})
    device: str = option(default="auto", metadata={"help": "auto|cpu|cuda[:N]"})
    threads: int | None = option(default=None, metadata={"help": "CPU threads (default: cores)"})
    eval_every: int = option(default=250, metadata={"help": "steps between evaluations"})
    eval_tokens: int | None = option(
        default=200_000,
        metadata={
            "help": "validation tokens per periodic evaluation; the final one uses the whole split"
        },
    )
    log_every: int = option(default=10, metadata={"help": "steps between metrics lines"})
    sample_every: int = option(default=0, metadata={"help": "steps between printed samples"})
    keep_last: int = option(default=1, metadata={"help": "checkpoints to keep"})
    keep: str | None = option(
        default=None,
        metadata={
            "help": "best|last: the model the run keeps at its top level (what sample and eval "
            "use): the best by validation loss, or the last (default: best for --max-time or "
            "--max-tokens runs, else last)",
        },
    )
    save_every_epoch: bool = option(
        default=False,
        metadata={"help": "evaluate and checkpoint at every epoch's end (sets --eval-every)"},
    )
    stateful: bool = option(
        default=False,
        metadata={
            "help": "truncated BPTT for recurrent models: carry the state across consecutive "
            "batches (with --batching epochs)"
        },
    )
    disjoint_windows: bool = option(
        default=False,
        metadata={
            "help": "--batching epochs: cut the text into disjoint chunks of block size + 1 "
            "tokens, as the TensorFlow char-RNN tutorial does (default: windows share their "
            "border token, so no target is skipped; --stateful lanes always do)"
        },
    )
    seed: int = option(default=1337, metadata={"help": "random seed"})
    resume: bool = option(default=False, metadata={"help": "continue the run in --out"})

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "eval_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.task not in (None, *TASKS):
            raise ConfigError(f"unknown --task {self.task!r}: use {', '.join(TASKS)}")
        if self.split not in SPLITS:
            raise ConfigError(f"unknown --split {self.split!r}: use {', '.join(SPLITS)}")
        if self.extra_layers < 0 or (self.num_classes is not None and self.num_classes < 2):
            raise ConfigError("--extra-layers must be >= 0 and --num-classes >= 2")
        if self.batching not in BATCHINGS:
            raise ConfigError(f"unknown --batching {self.batching!r}: use {', '.join(BATCHINGS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown --schedule {self.schedule!r}: use {', '.join(SCHEDULES)}")
        if self.block_size is not None and self.block_size <= 0:
            raise ConfigError("--block-size must be positive")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        for name in BUDGETS[:3]:  # 0 is no budget at all, not "until stopped"
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value:g} is not a budget: give a positive "
                    "number, or drop the flag for the default budget"
                )
        parse_duration(self.max_time)
        if self.keep not in (None, "best", "last"):
            raise ConfigError(f"unknown --keep {self.keep!r}: use best or last")
        if self.optimizer not in optim.OPTIMIZERS:
            raise ConfigError(f"unknown --optimizer {self.optimizer!r}: use adamw or muon")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"unknown --strategy {self.strategy!r}: use ddp or fsdp")
        if self.backend not in (None, "gloo", "nccl"):
            raise ConfigError(f"unknown --backend {self.backend!r}: use gloo or nccl")
        if self.stateful and self.batching not in ("auto", "epochs"):
            raise ConfigError(
                f"--stateful needs consecutive windows, which --batching {self.batching} does not "
                "keep: use --batching epochs (with --stateful it cuts the text into lanes)"
            )


# ---------------------------------------------------------------- one step


def make_optimizer(task: torch.nn.Module, cfg: TrainConfig):
    """The run's optimizer (lmforge.training.optim.make_optimizer with cfg's settings)."""
    return optim.make_optimizer(
        task, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), kind=cfg.optimizer
    )


def train_step(
    task: torch.nn.Module,
    batches: dict | list[dict],
    optimizer: torch.optim.Optimizer,
    *,
    precision: str = "fp32",
    grad_clip: float = 0.0,
    loss_fn=None,
    no_sync=None,
) -> float:
    """One optimizer step over one batch or a list of micro-batches (gradient accumulation).

    Returns the mean loss. Raises TrainingDiverged (before stepping) if the loss is not finite.

    Example:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for batch in batches:
            loss = train_step(model, batch, opt)
    """
    micro = batches if isinstance(batches, list) else [batches]
    dev = next(task.parameters()).device
    loss_fn = loss_fn or task.loss
    total = torch.zeros((), device=dev)
    for i, mb in enumerate(micro):
        mb = {k: v.to(dev, non_blocking=True) for k, v in mb.items()}
        # DDP: gradients are all-reduced only on the last micro-batch
        sync = no_sync() if no_sync is not None and i < len(micro) - 1 else nullcontext()
        with sync:
            with devices.autocast(dev, precision):
                loss = loss_fn(mb) / len(micro)
            loss.backward()
        total += loss.detach()
    value = distributed.mean_across_ranks(float(total), dev)  # every rank sees a NaN
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"loss is {value}")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(task.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value


@torch.inference_mode()
def evaluate(
    task: torch.nn.Module,
    examples,
    batch_size: int = 32,
    precision: str = "fp32",
    max_examples: int | None = None,
    shard: bool = True,
) -> dict:
    """Mean per-token loss and perplexity over `examples` (all, or an evenly spaced subset)."""
    if len(examples) == 0:
        raise DataError(
            "nothing to evaluate on: the split is empty (a run trained with --val-fraction 0 "
            "holds nothing out); pass --data with a text to evaluate on"
        )
    was_training = task.training
    task.eval()
    dev = next(task.parameters()).device
    index = np.arange(len(examples))
    if max_examples is not None and len(examples) > max_examples:
        index = np.linspace(0, len(examples) - 1, max_examples).astype(int)
    rank, world, _ = distributed.world()
    shard = shard and distributed.is_distributed()
    if shard:  # each rank scores its share; the sums are added below
        index = index[rank::world]
    subset = _Subset(examples, index)
    total, count, hits = 0.0, 0, 0
    scored = getattr(task, "loss_and_hits", None)  # classifiers and masked LMs: accuracy too
    predict = getattr(task, "loss_and_predictions", None)  # classifiers: which classes come out
    counts = torch.zeros(getattr(task, "num_classes", 0), dtype=torch.float64, device=dev)
    with progress.bar(len(subset), "eval", "ex", leave=False) as pbar:
        for batch in iterate_in_order(subset, batch_size):
            pbar.update(len(batch["labels"]))
            batch = {k: v.to(dev) for k, v in batch.items()}
            n = int((batch["labels"] != IGNORE).sum())
            if n == 0:
                continue
            with devices.autocast(dev, precision):
                if predict is not None:
                    loss, predicted = predict(batch)
                    counts += torch.bincount(predicted, minlength=len(counts))
                    batch_hits = (predicted == batch["labels"]).sum()
                elif scored is not None:
                    loss, batch_hits = scored(batch)
                else:
                    loss, batch_hits = task.loss(batch), 0
            total, hits, count = total + float(loss) * n, hits + int(batch_hits), count + n
    task.train(was_training)
    if shard:
        sums = torch.cat(
            [torch.tensor([total, count, hits], dtype=torch.float64, device=dev), counts]
        )
        torch.distributed.all_reduce(sums)
        total, count, hits = float(sums[0]), int(sums[1]), int(sums[2])
        counts = sums[3:]
    loss = total / max(count, 1)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
    if scored is not None:
        result["accuracy"] = hits / max(count, 1)
    if predict is not None:
        result["predicted_classes"] = [int(c) for c in counts.tolist()]
    return result


class _Subset:
    def __init__(self, examples, index):
        self.examples, self.index = examples, index

    def __len__(self):
        return len(self.index)

    def get(self, indices):
        return self.examples.get(self.index[np.asarray(indices)])


# ---------------------------------------------------------------- a whole run


def resolve_options(options: dict) -> tuple[TrainConfig, dict, dict]:
    """Split user options into (TrainConfig, model overrides, preset); preset train dict < user."""
    from lmforge.presets import family_classes, get_preset

    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    preset_name = options.get("preset") or TrainConfig.preset
    preset = get_preset(preset_name)
    cfg_cls, _ = family_classes(preset["family"])
    model_names = {f.name for f in dataclasses.fields(cfg_cls)}
    model_over, train_opts = {}, {}
    if preset.get("tokenizer"):
        train_opts["tokenizer"] = {"byte-bpe": "bpe"}.get(preset["tokenizer"], preset["tokenizer"])
    user_budget = any(options.get(k) is not None for k in BUDGETS)
    for k, v in preset.get("train", {}).items():  # the preset's suggestions, lowest precedence
        if not (user_budget and k in BUDGETS):  # a budget the user names replaces the preset's
            (train_opts if k in train_names else model_over)[k] = v
    for k, v in options.items():
        if v is None and k not in train_names:
            continue
        if k in train_names:
            train_opts[k] = v
        elif k in model_names:
            model_over[k] = v
        else:
            raise ConfigError(
                f"unknown option '{k}': not a training option nor a {preset['family']} config field"
            )
    if "max_seq_len" in options and options.get("block_size") is None:
        train_opts["block_size"] = None  # the user's context wins over the preset's block size
    try:
        cfg = TrainConfig(**train_opts)
    except TypeError as e:
        raise ConfigError(f"invalid training options: {e}") from None
    return cfg, model_over, preset


# What a resumed run may change: its budget (the new total), where it runs and what it reports.
RESUME_MAY_CHANGE = frozenset(
    {
        *BUDGETS,
        "out",
        "resume",
        "device",
        "threads",
        "precision",
        "compile",
        "strategy",
        "backend",
        "dist_timeout",
        "eval_every",
        "eval_tokens",
        "log_every",
        "sample_every",
        "keep_last",
        "keep",
        "save_every_epoch",
        "split",
    }
)


def resume_options(options: dict) -> tuple[dict, dict]:
    """--resume: the run's saved options with the given ones on top, and the run's config.json
    with what the given ones change added to its "resumes" list. A change of recipe (model, data,
    optimizer, schedule, batch) is a CheckpointError; a budget given replaces the saved ones."""
    from lmforge.presets import family_classes

    out = Path(options.get("out") or TrainConfig.out)
    last = ckpt.latest_checkpoint(out)
    if last is None:
        raise CheckpointError(
            f"--resume: {out} has no checkpoint to resume from; drop --resume to start a new run"
        )
    saved = ckpt.read_config(out)
    cfg_cls, _ = family_classes(saved["family"])
    model = dataclasses.asdict(cfg_cls(**saved["model"]))
    known = {**model, **saved["train"], "preset": saved.get("preset")}
    changed = {}
    for k, v in options.items():
        if k in known and k not in ("out", "resume") and not _same_option(known[k], v):
            changed[k] = [known[k], v]
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        k, (old, new) = refused[0], changed[refused[0]]
        more = f" (and {', '.join(refused[1:])})" if refused[1:] else ""
        raise CheckpointError(
            f"--resume continues {out} with its own settings, and {k} would change from {old!r} "
            f"to {new!r}{more}: drop --{k.replace('_', '-')}, or train a new run with another "
            "--out"
        )
    base = {k: v for k, v in saved["train"].items() if k not in ("out", "resume")}
    if any(options.get(k) is not None for k in BUDGETS):  # the budget given is the new total
        base = {k: v for k, v in base.items() if k not in BUDGETS}
    base["block_size"] = saved["data"]["block_size"]
    if base.get("init_from"):  # shape and tokenizer come from the pretrained folder again
        base.pop("tokenizer", None)
        base["dropout"] = saved["model"].get("dropout")
    else:
        base.update({k: v for k, v in saved["model"].items() if k != "vocab_size"})
    step = int(last.name.split("-")[-1])
    history = list(saved.get("resumes", []))
    if changed:
        history.append({"step": step, "changed": changed})
    return {**base, **options}, {**saved, "resumes": history}


def _same_option(saved, given) -> bool:
    """Whether a saved option (read back from JSON) and a given one are the same setting."""
    if isinstance(given, (tuple, list)):
        given = list(given)
    if saved == given:
        return True
    if isinstance(saved, str) and isinstance(given, (str, Path)):  # one path, spelled two ways
        a, b = Path(saved), Path(given)
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return False


def train(**options) -> dict:
    """Train a model from options (the same names as `lmforge train`'s flags); returns results.

    A progress bar shows on stderr when it is a terminal (`lmforge.progress.enable(False)`
    hides it, `enable(True)` forces it); evaluations, epochs and warnings are `logging` records
    of the "lmforge" logger: `logging.basicConfig(level=logging.INFO)` prints them.

    Example:
        result = lmforge.train(data="tinyshakespeare", tokenizer="char", preset="gpt-baby",
                               out="runs/shakes", max_time="90s")
        print(result["val_loss"])
    """
    lost = False
    try:
        with ExitStack() as held:  # the run folder's write lock, once _train takes it
            return _train(options, held)
    except LostContact:
        lost = True
        raise
    except RuntimeError as e:
        if distributed.world()[1] == 1:
            raise
        lost = True
        raise _lost_contact(e) from None
    finally:
        if not lost:  # a group whose peer died can abort the process when it is destroyed
            distributed.teardown()


def _train(options: dict, held: ExitStack) -> dict:
    resumed = None  # with --resume: the run's config.json, its "resumes" list brought up to date
    if options.get("resume"):
        options, resumed = resume_options(options)
    options, init_folder = _init_from_options(options)
    cfg, model_over, preset = resolve_options(options)
    from lmforge.presets import family_classes

    if cfg.stateful and not getattr(family_classes(preset["family"])[1], "is_recurrent", False):
        raise ConfigError(
            f"--stateful carries a recurrent state, and {cfg.preset} ({preset['family']}) has "
            "none: drop --stateful or train a char-rnn-* preset"
        )
    rank, world, local_rank = distributed.world()
    dev = devices.pick_device(cfg.device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if cfg.backend == "nccl" and dev.type != "cuda":
        raise ConfigError("--backend nccl needs CUDA GPUs: use --backend gloo (the CPU default)")
    if cfg.global_batch_size is not None:
        per_step = cfg.batch_size * world
        if cfg.global_batch_size % per_step:
            raise ConfigError(
                f"--global-batch-size {cfg.global_batch_size} is not divisible by --batch-size "
                f"{cfg.batch_size} x {world} processes: pick a multiple of {per_step}"
            )
        cfg = dataclasses.replace(cfg, grad_accum=cfg.global_batch_size // per_step)
    if cfg.strategy == "fsdp":
        try:
            distributed.fully_shard_fn()  # what distributed.shard() uses
        except ImportError:
            raise ConfigError(
                f"--strategy fsdp needs FSDP2 (fully_shard), which torch {torch.__version__} "
                "lacks: upgrade torch to 2.4 or newer, or use --strategy ddp"
            ) from None
    distributed.setup(dev, cfg.backend, cfg.dist_timeout)
    if dev.type == "cpu":
        devices.set_threads(cfg.threads)
    precision = devices.resolve_precision(cfg.precision, dev)
    run_dir = Path(cfg.out)

    task_spec(cfg, preset["family"])  # a --task the family lacks fails before preparing data
    if rank == 0:  # one writer per run folder; sample and eval read it without the lock
        held.enter_context(ckpt.run_lock(run_dir))
    # Every rank checks --out before the barrier below, after which rank 0 starts writing it.
    if not cfg.resume and run_dir.is_dir() and any(p.name != ckpt.LOCK for p in run_dir.iterdir()):
        if not (run_dir / "config.json").is_file():
            raise ConfigError(
                f"--out {run_dir} exists and is not an lmforge run: choose another folder"
            )
        if ckpt.list_checkpoints(run_dir):
            raise ConfigError(
                f"--out {run_dir} already holds a run: pass --resume to continue "
                "it or choose another --out"
            )
    if rank != 0:  # rank 0 prepares (and caches) the data first; the others then read it
        distributed.barrier()
    data = load_data(cfg)
    if rank == 0:
        distributed.barrier()
    tok = data.tokenizer
    spec = task_spec(cfg, preset["family"], data)
    model_cfg = {**preset["config"], **model_over, "vocab_size": tok.vocab_size}
    block_size = cfg.block_size or model_cfg.get("max_seq_len") or 128
    if "max_seq_len" in model_cfg and block_size > model_cfg["max_seq_len"]:
        model_cfg["max_seq_len"] = block_size
    batching = "epochs" if cfg.stateful else cfg.batching
    if spec is not None:  # classify / mlm: one packed row per document
        batching = "packed"
    if batching == "auto":
        batching = (
            "documents"
            if data.meta["splits"]["train"].get("offsets") and data.tokenizer.kind == "word"
            else "windows"
        )
    pretrained = None
    if init_folder is not None:  # --init-from: that folder's config and weights, not the preset's
        asked = cfg.block_size or model_over.get("max_seq_len")  # else: the pretrained length
        pretrained, model_cfg = _pretrained_start(init_folder, model_over, tok, asked or 0)
        block_size = asked or min(block_size, model_cfg["max_seq_len"])
        if cfg.epochs and "eval_every" not in options:  # evaluate (perplexity) once per epoch
            per_step = cfg.batch_size * world * cfg.grad_accum
            num_examples = (
                len(data.documents("train"))
                if spec
                else len(make_examples(data, "train", batching, block_size))
            )
            cfg = dataclasses.replace(cfg, eval_every=max(1, num_examples // per_step))

    from lmforge.presets import build_task

    ckpt_path = None
    if resumed is not None:
        ckpt_path = ckpt.latest_checkpoint(run_dir)  # resume_options made sure there is one
        saved = resumed
        if saved["model"] != model_cfg:  # e.g. the data now makes another vocabulary
            diff = sorted(
                k
                for k in set(saved["model"]) | set(model_cfg)
                if saved["model"].get(k) != model_cfg.get(k)
            )
            raise CheckpointError(
                f"--resume with a different model config ({', '.join(diff)} "
                f"changed): use the run's settings or a new --out"
            )

    torch.manual_seed(cfg.seed)
    task = build_task(preset["family"], model_cfg, spec)
    if pretrained is not None:
        load_pretrained(task, pretrained)
    if cfg.freeze_backbone:
        if not hasattr(task, "backbone") or spec is None:
            raise ConfigError("--freeze-backbone applies to --task classify: drop it")
        task.backbone.requires_grad_(False)
    if spec is not None:
        log.info(
            "trainable parameters: %s of %s (%.1f%%)",
            f"{task.num_params(trainable_only=True):,}",
            f"{task.num_params():,}",
            100 * task.num_params(trainable_only=True) / task.num_params(),
        )
    task = task.to(dev)
    precision = devices.resolve_precision(cfg.precision, dev, task)  # auto: narrow models fp32
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tok.save(run_dir / "tokenizer")
        ckpt.write_config(
            run_dir,
            {
                "family": preset["family"],
                "model": model_cfg,
                "train": dataclasses.asdict(cfg),
                "preset": cfg.preset,
                "task": spec,
                "data": {
                    "path": str(data.path),
                    "tokenizer": tok.kind,
                    "batching": batching,
                    "block_size": block_size,
                },
                **({"resumes": resumed["resumes"]} if resumed and resumed["resumes"] else {}),
            },
        )
    stride = block_size + 1 if cfg.disjoint_windows else None  # the TF tutorial's chunks
    train_examples = (
        None
        if batching == "windows" or cfg.stateful
        else make_examples(data, "train", batching, block_size, spec, stride)
    )
    if cfg.stateful:  # lanes of consecutive windows; the task carries the state between them
        batcher = ConsecutiveBatcher(
            data.tokens("train"), block_size, cfg.batch_size, cfg.seed, rank, world
        )
    elif batching == "windows":
        batcher = WindowBatcher(
            data.tokens("train"), block_size, cfg.batch_size, cfg.seed, rank, world
        )
    else:
        batcher = EpochBatcher(train_examples, cfg.batch_size, cfg.seed, rank, world)
    if cfg.save_every_epoch:  # an evaluation is followed by a checkpoint
        cfg = dataclasses.replace(cfg, eval_every=_steps_per_epoch(batcher, cfg.grad_accum))
    val_split = SPLITS[cfg.split] if spec is not None else "val"
    val_examples = make_examples(data, val_split, batching, block_size, spec)
    distributed.barrier()  # rank 0 has written config.json and the tokenizer
    log.info(
        "model: %s, %s parameters; %s precision on %s; batching %s, block %d",
        cfg.preset,
        f"{task.num_params():,}",
        precision,
        dev,
        batching,
        block_size,
    )
    try:
        return fit(
            task,
            batcher,
            val_examples,
            cfg,
            run_dir=run_dir,
            precision=precision,
            resume_from=ckpt_path,
            char_level=tok.kind == "char",
            tokenizer=tok,
            label_names=(spec or {}).get("labels"),
        )
    finally:
        distributed.teardown()


def fit(
    task,
    batcher,
    val_examples,
    cfg: TrainConfig,
    run_dir: Path | None = None,
    precision: str = "fp32",
    resume_from: Path | None = None,
    char_level: bool = False,
    tokenizer=None,
    label_names: list[str] | None = None,
) -> dict:
    """Train `task` on `batcher` until a budget runs out; evaluate, checkpoint, log metrics.

    Example:
        batcher = WindowBatcher(tokens, block_size=64, batch_size=12)
        result = fit(model, batcher, StrideWindows(val_tokens, 64), TrainConfig(max_steps=200))
    """
    rank, world, _ = distributed.world()
    is_main = rank == 0
    fsdp = distributed.is_distributed() and cfg.strategy == "fsdp"
    state = ckpt.load_state(resume_from) if resume_from is not None else None
    if state is not None:  # weights go in before sharding
        ckpt.load_weights(task, resume_from / "model.safetensors")
    if fsdp:
        distributed.shard(task)  # before the optimizer: parameters become sharded DTensors
    optimizer = make_optimizer(task, cfg)
    max_time = parse_duration(cfg.max_time)
    max_steps = cfg.max_steps
    if max_steps is None and cfg.epochs is None and cfg.max_tokens is None and max_time is None:
        max_steps = 1000
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * _block_tokens(batcher)

    step, tokens, elapsed, best_val = 0, 0, 0.0, float("inf")
    # each finished epoch's mean training loss (what Keras prints as an epoch's "loss")
    epoch_losses, epoch_sum, epoch_count = [], 0.0, 0
    if state is not None:
        distributed.load_optimizer_state(task, optimizer, state["optimizer"])
        batcher.load_state_dict(state["batcher"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        step, tokens, elapsed = state["step"], state["tokens"], state["elapsed"]
        best_val = state.get("best_val", best_val)
        epoch_losses = state.get("epoch_losses", epoch_losses)
        epoch_sum, epoch_count = state.get("epoch_sum", 0.0), state.get("epoch_count", 0)
        if run_dir is not None and is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
        log.info("resumed from %s at step %d", resume_from, step)

    loss_fn, no_sync = task.loss, None
    if fsdp:
        no_sync = distributed.fsdp_no_sync(task)
    elif distributed.is_distributed():
        loss_fn, no_sync = _wrap_distributed(task)
    eager_loss_fn = loss_fn
    if cfg.compile:
        loss_fn = _compiled(loss_fn)

    def progress_now() -> float:
        fractions = [0.0]
        if max_steps:
            fractions.append(step / max_steps)
        if cfg.epochs:
            fractions.append(batcher.epoch / cfg.epochs)
        if cfg.max_tokens:
            fractions.append(tokens / cfg.max_tokens)
        if max_time:
            fractions.append(elapsed / max_time)
        return max(fractions)

    def save(reason: str) -> None:
        if run_dir is None:
            return
        # full (gathered) states: a collective under FSDP, so every rank takes part
        weights = distributed.full_model_state(task) if fsdp else None
        opt_state = distributed.full_optimizer_state(task, optimizer)
        if is_main:
            _save(reason, weights, opt_state)
        if reason != "interrupted":
            distributed.barrier()  # nobody runs ahead of (or exits before) the checkpoint

    def _save(reason: str, weights, opt_state) -> None:
        state = {
            "step": step,
            "tokens": tokens,
            "elapsed": elapsed,
            "best_val": best_val,
            "epoch_losses": epoch_losses,
            "epoch_sum": epoch_sum,
            "epoch_count": epoch_count,
            "optimizer": opt_state,
            "batcher": batcher.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "reason": reason,
        }
        ckpt.save_checkpoint(run_dir, task, state, keep_last=cfg.keep_last, weights=weights)

    def save_best(val_loss: float) -> None:
        if run_dir is None:
            return
        weights = distributed.full_model_state(task) if fsdp else None
        if not is_main:
            return
        (run_dir / "best").mkdir(exist_ok=True)
        ckpt.save_weights(task, run_dir / "best" / "model.safetensors", weights=weights)
        write_atomic(
            run_dir / "best" / "best.json", json.dumps({"step": step, "val_loss": val_loss}) + "\n"
        )

    board = _tensorboard(run_dir) if run_dir is not None and is_main else None

    def log_metrics(row: dict) -> None:
        if run_dir is not None and is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if board is not None:
            for k, v in row.items():
                if k not in ("step", "final") and isinstance(v, (int, float)):
                    board.add_scalar(k, v, row["step"])

    has_val = len(val_examples) > 0  # --val-fraction 0: nothing held out, no evaluation

    def run_eval(final: bool) -> dict | None:
        if not has_val:
            return None
        limit = (
            None
            if final or cfg.eval_tokens is None
            else max(1, cfg.eval_tokens // max(1, _block_tokens(batcher)))
        )
        result = evaluate(
            task,
            val_examples,
            batch_size=max(cfg.batch_size, 16),
            precision=precision,
            max_examples=limit,
            shard=not fsdp,  # FSDP ranks must run the same forwards: each scores everything
        )
        if char_level:
            result["bits_per_char"] = result["loss"] / math.log(2)
        return result

    def eval_row(result: dict) -> dict:
        row = {
            "step": step,
            "tokens": tokens,
            "val_loss": result["loss"],
            "val_perplexity": result["perplexity"],
            "elapsed_s": elapsed,
            "epoch": batcher.epoch,
        }
        if "bits_per_char" in result:
            row["val_bits_per_char"] = result["bits_per_char"]
        is_classifier = hasattr(task, "num_classes")  # its loss is over labels, not tokens
        if "accuracy" in result:  # classify: of the labels; mlm: of the masked tokens
            row["val_accuracy"] = result["accuracy"]
            if is_main:
                what = "accuracy" if is_classifier else "masked-token accuracy"
                log.info("step %d: val %s %.4f", step, what, result["accuracy"])
        if is_main and is_classifier:
            log.info("step %d: val loss %.4f", step, result["loss"])
        elif is_main:
            log.info(
                "step %d: val loss %.4f, perplexity %.2f",
                step,
                result["loss"],
                result["perplexity"],
            )
        return row

    task.train()
    countable = _total_steps(max_steps, cfg, batcher, tokens_per_step)

    def schedule_progress() -> float:
        """progress_now(), but reaching 1 at the last step of a step-countable budget, so the
        last step runs at --min-lr (the first step still sees 0)."""
        last = step / (countable - 1) if countable and countable > 1 else 0.0
        return max(progress_now(), last)

    bar = progress.bar(
        total=countable,
        desc="train",
        unit="step",
        initial=step,
    )
    train_loss, recent = float("nan"), []
    t_window, tok_window = time.perf_counter(), 0
    interrupted, warmup_cut = False, False
    stop = []  # SIGTERM / Ctrl-C append to it: the loop stops between steps, never inside one
    prev_handlers = _install_stop_handlers(stop)
    dev = next(task.parameters()).device
    t_start, elapsed_before = time.perf_counter(), elapsed
    passes = hasattr(batcher, "batches_per_epoch")  # epochs batching: real passes, not draws
    epochs_done = int(batcher.epoch)
    try:
        while progress_now() < 1.0:
            if distributed.any_rank(bool(stop), dev):  # every rank stops after the same step
                raise KeyboardInterrupt
            for group in optimizer.param_groups:
                group["lr"] = lr_at(
                    step, schedule_progress(), cfg.lr, cfg.warmup_steps, min_lr, cfg.schedule
                )
            if not warmup_cut and 0 < step < cfg.warmup_steps and progress_now() >= WARMUP_SHARE:
                warmup_cut = True
                if is_main:
                    log.warning(
                        "warm-up ends at step %d, not %d: it takes at most %d%% of the budget "
                        "(a longer budget or a lower --warmup-steps keeps this from happening)",
                        step,
                        cfg.warmup_steps,
                        round(100 * WARMUP_SHARE),
                    )
            micro = [batcher.next_batch() for _ in range(cfg.grad_accum)]
            try:
                loss = train_step(
                    task,
                    micro,
                    optimizer,
                    precision=precision,
                    grad_clip=cfg.grad_clip,
                    loss_fn=loss_fn,
                    no_sync=no_sync,
                )
            except TrainingDiverged as e:
                last = ckpt.latest_checkpoint(run_dir) if run_dir else None
                kept = (
                    f"the last good checkpoint ({last.name}) is kept"
                    if last
                    else "no checkpoint was saved yet"
                )
                raise TrainingDiverged(
                    f"{e} at step {step + 1}; {kept}: lower --lr or raise "
                    "--warmup-steps, then --resume"
                ) from None
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - torch.compile fails at its first call
                if loss_fn is eager_loss_fn:
                    raise
                log.warning(
                    "torch.compile failed (%s); training eagerly",
                    str(e).strip().splitlines()[0][:200],
                )
                optimizer.zero_grad(set_to_none=True)
                loss_fn = eager_loss_fn
                loss = train_step(
                    task,
                    micro,
                    optimizer,
                    precision=precision,
                    grad_clip=cfg.grad_clip,
                    loss_fn=loss_fn,
                    no_sync=no_sync,
                )
            step += 1
            tokens += tokens_per_step
            elapsed = elapsed_before + time.perf_counter() - t_start
            recent.append(loss)
            epoch_sum, epoch_count = epoch_sum + loss, epoch_count + 1
            tok_window += tokens_per_step
            if step % cfg.log_every == 0 or progress_now() >= 1.0:
                now = time.perf_counter()
                train_loss = sum(recent) / len(recent)
                recent = []
                tps = tok_window / max(now - t_window, 1e-9)
                t_window, tok_window = now, 0
                log_metrics(
                    {
                        "step": step,
                        "tokens": tokens,
                        "train_loss": train_loss,
                        "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": tps,
                        "elapsed_s": elapsed,
                        "epoch": batcher.epoch,
                    }
                )
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            if max_time:  # the steps a time budget allows at this pace: a total and an ETA
                timed = max(step, math.ceil(step * max_time / max(elapsed, 1e-9)))
                bar.total = timed if countable is None else min(countable, timed)
            bar.update(1)
            if passes and int(batcher.epoch) > epochs_done:  # an epoch ended with this step
                epochs_done = int(batcher.epoch)
                epoch_losses.append(epoch_sum / max(epoch_count, 1))
                epoch_sum, epoch_count = 0.0, 0
                log_metrics(
                    {
                        "step": step,
                        "tokens": tokens,
                        "epoch": epochs_done,
                        "epoch_loss": epoch_losses[-1],  # the mean train loss of that epoch
                        "elapsed_s": elapsed,
                    }
                )
                if is_main:
                    log.info("epoch %d: train loss %.4f", epochs_done, epoch_losses[-1])
            if step % cfg.eval_every == 0 and progress_now() < 1.0:
                result = run_eval(final=False)
                if result is not None:
                    log_metrics(eval_row(result))
                    if result["loss"] < best_val:
                        best_val = result["loss"]
                        save_best(result["loss"])
                save("periodic")
            if cfg.sample_every and step % cfg.sample_every == 0 and tokenizer and not fsdp:
                _print_sample(task, tokenizer)
    except StopNow:
        log.info("stopped at once: nothing saved since the last checkpoint")
        raise
    except KeyboardInterrupt:
        interrupted = True
    except RuntimeError as e:
        if not distributed.is_distributed():
            raise
        raise _lost_contact(e) from None
    finally:
        bar.close()
        if board is not None:
            board.flush()
        for sig, prev in prev_handlers.items():
            signal.signal(sig, prev)
    tps_all = tokens / max(elapsed, 1e-9)
    if interrupted:
        save("interrupted")
        log.info("interrupted at step %d: checkpoint saved; continue with --resume", step)
        raise KeyboardInterrupt
    if has_val and is_main:
        log.info(
            "step %d: budget spent; final evaluation on all %d validation examples (not counted "
            "in the budget)",
            step,
            len(val_examples),
        )
    result = run_eval(final=True)
    if result is None:  # nothing held out: the run ends without a validation loss
        result = {"loss": None, "perplexity": None}
        log_metrics({"step": step, "tokens": tokens, "elapsed_s": elapsed, "final": True})
    else:
        if result["loss"] < best_val:
            best_val = result["loss"]
            save_best(result["loss"])
        log_metrics({**eval_row(result), "final": True})
        warning = constant_predictions(result.get("predicted_classes", []), label_names)
        if warning and is_main:
            log.warning("%s", warning)
    save("final")
    final_loss = result["loss"]
    kept = (
        _keep_best(cfg, run_dir, task, result, run_eval, step) if final_loss is not None else None
    )
    if kept is not None:
        result = kept
    out = {
        "val_loss": result["loss"],
        "val_perplexity": result["perplexity"],
        "train_loss": train_loss if recent == [] else sum(recent) / len(recent),
        "steps": step,
        "tokens": tokens,
        "tokens_per_s": tps_all,
        "elapsed_s": elapsed,
        "precision": precision,
        "run": str(run_dir) if run_dir else None,
    }
    if "bits_per_char" in result:
        out["val_bits_per_char"] = result["bits_per_char"]
    if "accuracy" in result:
        out["val_accuracy"] = result["accuracy"]
    if epoch_losses:
        out["epoch_losses"] = epoch_losses
    if final_loss is not None:  # which model the run kept, and what the last one scored
        out["final_val_loss"] = final_loss
        out["kept"] = "best" if kept is not None else "last"
        out["best_step"] = kept["step"] if kept is not None else step
    return out


def keep_mode(cfg: TrainConfig) -> str:
    """--keep, or its default: best for budgeted runs (time, tokens), where the end of the budget
    need not be the model's best point, else last."""
    if cfg.keep is not None:
        return cfg.keep
    return "best" if cfg.max_time is not None or cfg.max_tokens is not None else "last"


def _keep_best(cfg: TrainConfig, run_dir, task, last: dict, run_eval, step: int) -> dict | None:
    """With --keep best: score RUN/best's weights on the whole validation split, as the last
    model just was, and make them the run's top-level model when they are better. Returns their
    evaluation (with its "step"), or None when the last model stays (task then holds it)."""
    if keep_mode(cfg) != "best" or run_dir is None:
        return None
    best_dir = Path(run_dir) / "best"
    if not (best_dir / "best.json").is_file() or distributed.is_distributed():
        return None  # never beaten, or several ranks (whose weights are sharded): keep the last
    best_step = json.loads((best_dir / "best.json").read_text())["step"]
    if best_step >= step:  # the last model is the best one
        return None
    last_dir = ckpt.latest_checkpoint(run_dir)  # step's, saved just before
    ckpt.load_weights(task, best_dir / "model.safetensors")
    result = run_eval(final=True)
    if result["loss"] >= last["loss"]:
        ckpt.load_weights(task, last_dir / "model.safetensors")
        return None
    ckpt.link_or_copy(best_dir / "model.safetensors", Path(run_dir) / "model.safetensors")
    log.info(
        "keeping the model of step %d (val loss %.4f) over the last one (%.4f): --keep best",
        best_step,
        result["loss"],
        last["loss"],
    )
    return {**result, "step": best_step}


class LostContact(LmforgeError):
    """A rank's peers died or stopped answering. The process should end right after saying so
    (`exit_now`): gloo's threads of the broken group can abort it at interpreter shutdown."""

    exit_now = True


def _lost_contact(e: RuntimeError) -> LmforgeError:
    """The one-line error of a rank whose peers died or stopped answering."""
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return LostContact(
        f"rank {distributed.world()[0]}: lost contact with the other training processes "
        f"({first}); the last complete checkpoint is kept: relaunch with --resume"
    )


def _tensorboard(run_dir: Path):
    """A SummaryWriter into RUN/tensorboard when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _block_tokens(batcher) -> int:
    if isinstance(batcher, (WindowBatcher, ConsecutiveBatcher)):
        return batcher.block_size
    ex = batcher.examples
    return getattr(ex, "block_size", None) or getattr(ex, "length", 1)


def _total_steps(max_steps, cfg: TrainConfig, batcher, tokens_per_step: int) -> int | None:
    """Where the step-countable budgets end, for the progress bar's total and ETA: the first
    of --max-steps, --epochs and --max-tokens (None when only --max-time bounds the run)."""
    ends = [max_steps] if max_steps else []
    if cfg.epochs:
        ends.append(math.ceil(cfg.epochs * _steps_per_epoch(batcher, cfg.grad_accum)))
    if cfg.max_tokens:
        ends.append(math.ceil(cfg.max_tokens / tokens_per_step))
    return min(ends) if ends else None


def _steps_per_epoch(batcher, grad_accum: int) -> int:
    """Optimizer steps in one pass over the train split (random windows: its size in tokens)."""
    if isinstance(batcher, WindowBatcher):
        per_batch = batcher.block_size * batcher.batch_size * batcher.world_size
        batches = len(batcher.tokens) / per_batch
    else:
        batches = batcher.batches_per_epoch
    return max(1, round(batches / grad_accum))


def _compiled(loss_fn):
    try:
        return torch.compile(loss_fn)
    except Exception as e:  # noqa: BLE001 - any compile failure falls back to eager
        log.warning("torch.compile failed (%s); training eagerly", str(e).splitlines()[0])
        return loss_fn


class _LossModule(torch.nn.Module):
    """Makes `task.loss(batch)` a module's forward, which is what DDP hooks into."""

    def __init__(self, task: torch.nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch: dict) -> torch.Tensor:
        return self.task.loss(batch)


def _wrap_distributed(task):
    """(loss function, no_sync context factory) of the task wrapped in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    dev = next(task.parameters()).device
    ddp = DistributedDataParallel(
        _LossModule(task), device_ids=[dev] if dev.type == "cuda" else None
    )
    return ddp, ddp.no_sync


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, without saving (the step under way may be half done)."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _install_stop_handlers(stop: list) -> dict:
    """SIGTERM (SLURM, torchrun) and a first Ctrl-C ask the loop to stop at the next step
    boundary; a second Ctrl-C raises StopNow. Raising at the first signal could land after a
    step drew its batches but before it was counted, and the saved checkpoint would then skip
    those batches on resume. Returns the previous handlers."""

    def handler(signum, frame):
        if stop and signum == signal.SIGINT:
            raise StopNow
        if not stop and signum == signal.SIGINT:
            print(
                "\nstopping after this step (Ctrl-C again: stop now, without saving)",
                file=sys.stderr,
                flush=True,
            )
        stop.append(signum)

    previous = {}
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) == signal.SIG_IGN:  # e.g. Ctrl-C in a `nohup ... &` job
            continue
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the signals alone
            break
    return previous


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    write_atomic(path, "".join(line + "\n" for line in keep))


def _print_sample(task, tokenizer) -> None:
    from lmforge.generation.generate import generate_text

    was = task.training
    task.eval()
    text = "".join(
        generate_text(
            task,
            tokenizer,
            "\n" if tokenizer.kind == "char" else "",
            max_new_tokens=200,
            temperature=0.8,
            seed=0,
        )
    )
    task.train(was)
    log.info("sample:\n%s", text)
