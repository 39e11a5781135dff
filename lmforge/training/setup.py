"""`train()`: options resolved (defaults < preset < --config < flags), data, model and run folder
set up, then handed to loop.fit(). What a run reads is in run_data.py, pretrained starts in
pretrained.py, the optimizer in optim.py.
"""

import dataclasses
import logging
from contextlib import ExitStack
from pathlib import Path

import torch

from lmforge import device as devices
from lmforge import run_folder as ckpt
from lmforge.data.batching import (
    ConsecutiveBatcher,
    EpochBatcher,
    WindowBatcher,
)
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.peft import save_run_adapter
from lmforge.layers.heads import LMHead
from lmforge.layers.lora import apply_lora
from lmforge.tokenizers.chat import save_chat_template
from lmforge.training import budget, distributed
from lmforge.training.config import BUDGETS, TrainConfig
from lmforge.training.loop import LostContact, _lost_contact, _steps_per_epoch, fit
from lmforge.training.pretrained import (
    _init_from_options,
    _pretrained_start,
    load_pretrained,
)
from lmforge.training.run_data import (
    SPLITS,
    load_data,
    load_sft_data,
    make_examples,
    make_sft_examples,
    task_spec,
)

log = logging.getLogger(__name__)


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
        "auto",
    }
)


def resume_options(options: dict) -> tuple[dict, dict]:
    """--resume: the run's saved options with the given ones on top, and the run's config.json
    with what the given ones change added to its "resumes" list. A change of recipe (model, data,
    optimizer, schedule, batch) is a CheckpointError; a budget given replaces the saved ones."""
    from lmforge.presets import all_presets, family_classes

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
        # a field the run was saved before, which its preset sets now (gpt-shakespeare's Canon
        # layers): the run resumes with the field's default, as it was made (config.json then
        # records it)
        preset = all_presets().get(saved.get("preset"), {}).get("config", {})
        predated = {k: model[k] for k in preset if k in model and k not in saved["model"]}
        saved = {**saved, "model": {**saved["model"], **predated}}
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
    explicit = {k for k, v in options.items() if v is not None}  # what the user asked for
    if options.get("resume"):
        options, resumed = resume_options(options)
    options, init_folder = _init_from_options(options)
    if options.get("lora_rank") is not None and options.get("optimizer") is None:
        options = {**options, "optimizer": "adamw"}  # adapters train with AdamW, not the preset's
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
    is_sft = cfg.task == "sft"  # chat / instruction records, the loss on the answers
    data = load_sft_data(cfg) if is_sft else load_data(cfg)
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
    if is_sft:  # several examples per row, or one per row padded per batch
        batching = "sft-packed" if cfg.pack else "sft-padded"
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
            if is_sft:
                num_examples = len(make_sft_examples(data, "train", block_size, cfg.pack))
            elif spec:
                num_examples = len(data.documents("train"))
            else:
                num_examples = len(make_examples(data, "train", batching, block_size))
            cfg = dataclasses.replace(cfg, eval_every=max(1, num_examples // per_step))

    from lmforge.presets import build_task

    choice = resumed.get("auto_choice") if resumed else None  # a resumed run keeps its choice
    if resumed is None and init_folder is None and budget.applies(cfg, preset, world):
        model_cfg, choice = budget.choose_recipe(
            cfg,
            preset,
            model_cfg,
            explicit,
            lambda c: build_task(preset["family"], c, spec),
            dev,
            block_size,
            train_tokens=data.num_tokens("train"),
        )
        log.info("%s", choice["reason"])
        cfg = dataclasses.replace(
            cfg, weight_decay=choice["weight_decay"], compile=choice.get("compile", cfg.compile)
        )
        if choice.get("block_size") is not None:  # a candidate with a context of its own
            block_size = choice["block_size"]
            cfg = dataclasses.replace(cfg, batch_size=choice["batch_size"], block_size=block_size)
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
    lora = _add_lora(task, cfg, spec) if cfg.lora_rank is not None else None
    if spec is not None or lora is not None:
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
        if is_sft:  # the template the model learns to answer in, for chat, serve and export
            save_chat_template(run_dir / "tokenizer", data.template)
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
                **({"lora": lora} if lora is not None else {}),
                **({"resumes": resumed["resumes"]} if resumed and resumed["resumes"] else {}),
                **({"auto_choice": choice} if choice else {}),
            },
        )
    stride = block_size + 1 if cfg.disjoint_windows else None  # the TF tutorial's chunks
    if is_sft:
        train_examples = make_sft_examples(data, "train", block_size, cfg.pack)
    elif batching == "windows" or cfg.stateful:
        train_examples = None
    else:
        train_examples = make_examples(data, "train", batching, block_size, spec, stride)
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
    if is_sft:  # held-out records: their loss is the answers' only
        val_examples = make_sft_examples(data, "val", block_size, cfg.pack)
    else:
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
        result = fit(
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
            spent_s=(choice or {}).get("compile_s", 0.0) if resumed is None else 0.0,
        )
        if lora is not None and rank == 0:  # fit leaves the run's kept model in task
            save_run_adapter(task, run_dir, cfg.init_from or "", lora["trained"])
        # Every rank ends together: a rank that tore its gloo group down while rank 0 still
        # wrote the run sometimes aborted at exit ("terminate called without an active
        # exception", a busy 2-core machine, the FSDP -> DDP resume test).
        distributed.barrier()
        return {**result, "auto_choice": choice}
    finally:
        distributed.teardown()


def _add_lora(task, cfg: TrainConfig, spec: dict | None) -> dict:
    """--lora-rank: freeze `task` and wrap the layers --lora-targets picks in LoRA adapters; a
    new task's own parts (a classifier's head and extra layers) train in full. Returns the run
    config's "lora" entry, which load_folder reads to rebuild the same layers."""
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_rank
    names = apply_lora(task, cfg.lora_rank, alpha, cfg.lora_dropout, cfg.lora_targets)
    trained = []
    if spec is not None and spec.get("kind") == "classify":
        for name, child in task.named_children():
            if name != "backbone" and any(True for _ in child.parameters()):
                child.requires_grad_(True)
                trained.append(name)
    elif cfg.lora_train_head:
        if not isinstance(getattr(task, "head", None), LMHead):
            raise ConfigError(
                f"--lora-train-head trains a causal language model's output head (gpt and llama "
                f"families), and a {type(task).__name__} has none: drop --lora-train-head"
            )
        task.head.untie()  # its own copy, as PEFT's modules_to_save: the embedding stays frozen
        task.head.requires_grad_(True)
        trained.append("head")
    return {
        "rank": cfg.lora_rank,
        "alpha": alpha,
        "dropout": cfg.lora_dropout,
        "targets": names,
        "trained": trained,
    }
