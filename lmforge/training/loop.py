"""The one training loop: `fit()` drives a run, `train_step()` is one step.

Any task trains here through `task.loss(batch)`. Everything that decides which batch comes next
(batcher position, RNG states, step, tokens, elapsed time) is in LoopState, whose state_dict() is
state.pt, so N steps + resume + N steps equals 2N straight steps bit for bit (for step- and
token-based budgets). setup.py's `train()` builds what fit() gets.
"""

import dataclasses
import json
import logging
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import torch

from lmforge import device as devices
from lmforge import progress
from lmforge import run_folder as ckpt
from lmforge.data.batching import (
    ConsecutiveBatcher,
    WindowBatcher,
    iterate_in_order,
)
from lmforge.data.windows import IGNORE
from lmforge.errors import DataError, LmforgeError
from lmforge.evaluate.metrics import constant_predictions
from lmforge.files import write_atomic
from lmforge.layers.layout import train_layout_
from lmforge.training import distributed, optim
from lmforge.training.config import TrainConfig
from lmforge.training.schedules import WARMUP_SHARE, lr_at, parse_duration

log = logging.getLogger(__name__)


class TrainingDiverged(LmforgeError):
    """The loss became NaN or infinite."""


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


@dataclass
class LoopState:
    """Where a run stands between steps. With the optimizer's state, the batcher's position and
    the RNG states, `state_dict()` is what state.pt holds: resuming from it continues the run as
    if it had never stopped."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumes
    best_val: float = float("inf")
    # each finished epoch's mean training loss (what Keras prints as an epoch's "loss"), and the
    # running sum and count of the epoch under way
    epoch_losses: list[float] = dataclass_field(default_factory=list)
    epoch_sum: float = 0.0
    epoch_count: int = 0

    def state_dict(self, optimizer_state: dict, batcher, reason: str) -> dict:
        """state.pt's contents (plain tensors, numbers and Python RNG state)."""
        return {
            **dataclasses.asdict(self),
            "optimizer": optimizer_state,
            "batcher": batcher.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "reason": reason,
        }

    @classmethod
    def load_state_dict(cls, state: dict, batcher) -> "LoopState":
        """The loop state of a state.pt, with the batcher and RNGs put back where they were
        (the optimizer's state is the caller's: it may be sharded). Older runs lack the epoch
        and best_val entries."""
        batcher.load_state_dict(state["batcher"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: state[k] for k in names if k in state})


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
    spent_s: float = 0.0,
) -> dict:
    """Train `task` on `batcher` until a budget runs out; evaluate, checkpoint, log metrics.
    `spent_s`: seconds of a time budget already used before the first step (a budgeted run's
    compiled probe, whose compile this run's then reuses); a resumed run has its own count.

    Example:
        batcher = WindowBatcher(tokens, block_size=64, batch_size=12)
        result = fit(model, batcher, StrideWindows(val_tokens, 64), TrainConfig(max_steps=200))
    """
    rank, world, _ = distributed.world()
    is_main = rank == 0
    fsdp = distributed.is_distributed() and cfg.strategy == "fsdp"
    saved = ckpt.load_state(resume_from) if resume_from is not None else None
    if saved is not None:  # weights go in before sharding
        ckpt.load_weights(task, resume_from / "model.safetensors")
    train_layout_(task)  # row-major, as a resumed run loads them, even if it decoded before
    if fsdp:
        distributed.shard(task)  # before the optimizer: parameters become sharded DTensors
    optimizer = make_optimizer(task, cfg)
    max_time = parse_duration(cfg.max_time)
    max_steps = cfg.max_steps
    if max_steps is None and cfg.epochs is None and cfg.max_tokens is None and max_time is None:
        max_steps = 1000
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * _block_tokens(batcher)

    loop = LoopState(elapsed=spent_s)
    if saved is not None:
        loop = LoopState.load_state_dict(saved, batcher)
        distributed.load_optimizer_state(task, optimizer, saved["optimizer"])
        if run_dir is not None and is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", loop.step)
        log.info("resumed from %s at step %d", resume_from, loop.step)

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
            fractions.append(loop.step / max_steps)
        if cfg.epochs:
            fractions.append(batcher.epoch / cfg.epochs)
        if cfg.max_tokens:
            fractions.append(loop.tokens / cfg.max_tokens)
        if max_time:
            fractions.append(loop.elapsed / max_time)
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
        state = loop.state_dict(opt_state, batcher, reason)
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
            run_dir / "best" / "best.json",
            json.dumps({"step": loop.step, "val_loss": val_loss}) + "\n",
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
            "step": loop.step,
            "tokens": loop.tokens,
            "val_loss": result["loss"],
            "val_perplexity": result["perplexity"],
            "elapsed_s": loop.elapsed,
            "epoch": batcher.epoch,
        }
        if "bits_per_char" in result:
            row["val_bits_per_char"] = result["bits_per_char"]
        is_classifier = hasattr(task, "num_classes")  # its loss is over labels, not tokens
        if "accuracy" in result:  # classify: of the labels; mlm: of the masked tokens
            row["val_accuracy"] = result["accuracy"]
            if is_main:
                what = "accuracy" if is_classifier else "masked-token accuracy"
                log.info("step %d: val %s %.4f", loop.step, what, result["accuracy"])
        if is_main and is_classifier:
            log.info("step %d: val loss %.4f", loop.step, result["loss"])
        elif is_main:
            log.info(
                "step %d: val loss %.4f, perplexity %.2f",
                loop.step,
                result["loss"],
                result["perplexity"],
            )
        return row

    task.train()
    countable = _total_steps(max_steps, cfg, batcher, tokens_per_step)

    def schedule_progress() -> float:
        """progress_now(), but reaching 1 at the last step of a step-countable budget, so the
        last step runs at --min-lr (the first step still sees 0)."""
        last = loop.step / (countable - 1) if countable and countable > 1 else 0.0
        return max(progress_now(), last)

    bar = progress.bar(
        total=countable,
        desc="train",
        unit="step",
        initial=loop.step,
    )
    train_loss, recent = float("nan"), []
    t_window, tok_window = time.perf_counter(), 0
    interrupted, warmup_cut = False, False
    step_options = dict(precision=precision, grad_clip=cfg.grad_clip, no_sync=no_sync)
    stop = []  # SIGTERM / Ctrl-C append to it: the loop stops between steps, never inside one
    prev_handlers = _install_stop_handlers(stop)
    dev = next(task.parameters()).device
    t_start, elapsed_before = time.perf_counter(), loop.elapsed
    passes = hasattr(batcher, "batches_per_epoch")  # epochs batching: real passes, not draws
    epochs_done = int(batcher.epoch)
    try:
        while progress_now() < 1.0:
            if distributed.any_rank(bool(stop), dev):  # every rank stops after the same step
                raise KeyboardInterrupt
            for group in optimizer.param_groups:
                group["lr"] = lr_at(
                    loop.step, schedule_progress(), cfg.lr, cfg.warmup_steps, min_lr, cfg.schedule
                )
            if (
                not warmup_cut
                and 0 < loop.step < cfg.warmup_steps
                and progress_now() >= WARMUP_SHARE
            ):
                warmup_cut = True
                if is_main:
                    log.warning(
                        "warm-up ends at step %d, not %d: it takes at most %d%% of the budget "
                        "(a longer budget or a lower --warmup-steps keeps this from happening)",
                        loop.step,
                        cfg.warmup_steps,
                        round(100 * WARMUP_SHARE),
                    )
            micro = [batcher.next_batch() for _ in range(cfg.grad_accum)]
            try:
                loss = train_step(task, micro, optimizer, loss_fn=loss_fn, **step_options)
            except TrainingDiverged as e:
                last = ckpt.latest_checkpoint(run_dir) if run_dir else None
                kept = (
                    f"the last good checkpoint ({last.name}) is kept"
                    if last
                    else "no checkpoint was saved yet"
                )
                raise TrainingDiverged(
                    f"{e} at step {loop.step + 1}; {kept}: lower --lr or raise "
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
                loss = train_step(task, micro, optimizer, loss_fn=loss_fn, **step_options)
            loop.step += 1
            loop.tokens += tokens_per_step
            loop.elapsed = elapsed_before + time.perf_counter() - t_start
            recent.append(loss)
            loop.epoch_sum, loop.epoch_count = loop.epoch_sum + loss, loop.epoch_count + 1
            tok_window += tokens_per_step
            if loop.step % cfg.log_every == 0 or progress_now() >= 1.0:
                now = time.perf_counter()
                train_loss = sum(recent) / len(recent)
                recent = []
                tps = tok_window / max(now - t_window, 1e-9)
                t_window, tok_window = now, 0
                log_metrics(
                    {
                        "step": loop.step,
                        "tokens": loop.tokens,
                        "train_loss": train_loss,
                        "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": tps,
                        "elapsed_s": loop.elapsed,
                        "epoch": batcher.epoch,
                    }
                )
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            if max_time:  # the steps a time budget allows at this pace: a total and an ETA
                timed = max(loop.step, math.ceil(loop.step * max_time / max(loop.elapsed, 1e-9)))
                bar.total = timed if countable is None else min(countable, timed)
            bar.update(1)
            if passes and int(batcher.epoch) > epochs_done:  # an epoch ended with this step
                epochs_done = int(batcher.epoch)
                loop.epoch_losses.append(loop.epoch_sum / max(loop.epoch_count, 1))
                loop.epoch_sum, loop.epoch_count = 0.0, 0
                log_metrics(
                    {
                        "step": loop.step,
                        "tokens": loop.tokens,
                        "epoch": epochs_done,
                        "epoch_loss": loop.epoch_losses[-1],  # the mean train loss of that epoch
                        "elapsed_s": loop.elapsed,
                    }
                )
                if is_main:
                    log.info("epoch %d: train loss %.4f", epochs_done, loop.epoch_losses[-1])
            if loop.step % cfg.eval_every == 0 and progress_now() < 1.0:
                result = run_eval(final=False)
                if result is not None:
                    log_metrics(eval_row(result))
                    if result["loss"] < loop.best_val:
                        loop.best_val = result["loss"]
                        save_best(result["loss"])
                save("periodic")
            if cfg.sample_every and loop.step % cfg.sample_every == 0 and tokenizer and not fsdp:
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
    tps_all = loop.tokens / max(loop.elapsed, 1e-9)
    if interrupted:
        save("interrupted")
        log.info("interrupted at step %d: checkpoint saved; continue with --resume", loop.step)
        raise KeyboardInterrupt
    if has_val and is_main:
        log.info(
            "step %d: budget spent; final evaluation on all %d validation examples (not counted "
            "in the budget)",
            loop.step,
            len(val_examples),
        )
    result = run_eval(final=True)
    if result is None:  # nothing held out: the run ends without a validation loss
        result = {"loss": None, "perplexity": None}
        log_metrics(
            {"step": loop.step, "tokens": loop.tokens, "elapsed_s": loop.elapsed, "final": True}
        )
    else:
        if result["loss"] < loop.best_val:
            loop.best_val = result["loss"]
            save_best(result["loss"])
        log_metrics({**eval_row(result), "final": True})
        warning = constant_predictions(result.get("predicted_classes", []), label_names)
        if warning and is_main:
            log.warning("%s", warning)
    save("final")
    final_loss = result["loss"]
    kept = (
        _keep_best(cfg, run_dir, task, result, run_eval, loop.step)
        if final_loss is not None
        else None
    )
    if kept is not None:
        result = kept
    out = {
        "val_loss": result["loss"],
        "val_perplexity": result["perplexity"],
        "train_loss": train_loss if recent == [] else sum(recent) / len(recent),
        "steps": loop.step,
        "tokens": loop.tokens,
        "tokens_per_s": tps_all,
        "elapsed_s": loop.elapsed,
        "precision": precision,
        "run": str(run_dir) if run_dir else None,
    }
    if "bits_per_char" in result:
        out["val_bits_per_char"] = result["bits_per_char"]
    if "accuracy" in result:
        out["val_accuracy"] = result["accuracy"]
    if loop.epoch_losses:
        out["epoch_losses"] = loop.epoch_losses
    if final_loss is not None:  # which model the run kept, and what the last one scored
        out["final_val_loss"] = final_loss
        out["kept"] = "best" if kept is not None else "last"
        out["best_step"] = kept["step"] if kept is not None else loop.step
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
    devices.separate_compile_cache()
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
    train_layout_(task)  # the engine laid the weights out for decoding: back for training
    log.info("sample:\n%s", text)
