"""TrainConfig: the options of `lmforge train` and `lmforge.train()`, checked once."""

from dataclasses import dataclass
from dataclasses import field as option

from lmforge.errors import ConfigError
from lmforge.layers import lora
from lmforge.training import optim
from lmforge.training.run_data import SPLITS
from lmforge.training.schedules import SCHEDULES, parse_duration

BUDGETS = ("max_steps", "epochs", "max_tokens", "max_time")  # the first one spent ends a run


BATCHINGS = ("auto", "windows", "epochs", "documents", "blocks")


TASKS = ("causal-lm", "classify", "mlm", "sft")


@dataclass
class TrainConfig:
    """Options of `lmforge train` / `lmforge.train()`; a preset's `train` dict sets defaults."""

    data: str = option(
        default="python-stdlib", metadata={"help": "raw source, dataset name or prepared folder"}
    )
    tokenizer: str = option(default="char", metadata={"help": "tokenizer kind or folder"})
    vocab_size: int | None = option(default=None, metadata={"help": "for trained tokenizers"})
    field: str | None = option(
        default=None,
        metadata={
            "help": "CSV column / JSON field / template; --task sft: NAME=FIELD[,...] maps "
            "record fields (prompt=question,completion=answer.text; dotted paths, lists joined)"
        },
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
            "help": "causal-lm|classify|mlm|sft (default: the family's own: causal-lm for gpt, "
            "classify for bert); sft: supervised fine-tuning on chat / prompt-completion / "
            "Alpaca records, the loss on the answers only"
        },
    )
    pack: bool = option(
        default=False,
        metadata={
            "help": "--task sft: pack several examples into each block-size row, attention "
            "kept inside each example (default: one example per row, padded per batch)"
        },
    )
    train_on_prompt: bool = option(
        default=False,
        metadata={"help": "--task sft: the loss covers every token, not only the answers"},
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
    lora_rank: int | None = option(
        default=None,
        metadata={
            "help": "train a LoRA adapter of this rank (e.g. 8) on a frozen model, saved in "
            "PEFT's format in RUN/adapter (default: off, every weight trains)"
        },
    )
    lora_alpha: float | None = option(
        default=None,
        metadata={
            "help": "LoRA scale numerator: updates are scaled alpha/rank (default: 2 x rank)"
        },
    )
    lora_dropout: float = option(
        default=0.0, metadata={"help": "dropout on the LoRA adapters' input, in [0, 1)"}
    )
    lora_targets: str = option(
        default="all-linear",
        metadata={
            "help": "linear layers that get adapters: attn, mlp, all-linear (every one but the "
            "head), or comma-separated layer names (qkv,down)"
        },
    )
    lora_train_head: bool = option(
        default=False,
        metadata={
            "help": "with --lora-rank: the language model's output head trains in full beside "
            "the adapters (a tied head gets its own copy; the input embedding stays frozen)"
        },
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
    auto: bool = option(
        default=True,
        metadata={
            "help": "with --max-time or --max-tokens, pick the model size (among the preset's "
            "candidates) and dropout the budget can use; explicit flags always win"
        },
    )
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
        for name in ("pack", "train_on_prompt"):
            if getattr(self, name) and self.task != "sft":
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{flag} applies to --task sft only: drop {flag}, or pass --task sft"
                )
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
        if self.lora_rank is not None:
            lora.check_options(self.lora_rank, self.lora_alpha, self.lora_dropout)
            if self.optimizer != "adamw":  # Muon orthogonalizes whole hidden matrices
                raise ConfigError(
                    f"--lora-rank trains its adapters with AdamW, and --optimizer is "
                    f"{self.optimizer}: drop --optimizer (LoRA picks adamw) or give "
                    "--optimizer adamw"
                )
            if self.lora_train_head and self.task in ("mlm", "classify"):
                raise ConfigError(
                    f"--lora-train-head trains a causal language model's output head, and --task "
                    f"{self.task} has none to train that way (a classifier's new head trains in "
                    "full anyway): drop --lora-train-head"
                )
        elif self.lora_alpha is not None or self.lora_dropout or self.lora_train_head:
            raise ConfigError(
                "--lora-alpha, --lora-dropout and --lora-train-head set up LoRA: add --lora-rank 8"
            )
        if self.stateful and self.batching not in ("auto", "epochs"):
            raise ConfigError(
                f"--stateful needs consecutive windows, which --batching {self.batching} does not "
                "keep: use --batching epochs (with --stateful it cuts the text into lanes)"
            )
