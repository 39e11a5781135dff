"""Held-out ELI5 perplexity of LoRA beside full fine-tuning at the same budget, on the workflow
of examples/gpt2_finetune_eli5.py: the same small GPT-2-shaped model pretrained on Tiny
Shakespeare, then fine-tuned on ELI5 answers with the example's recipe (3 epochs of 8 x 128
blocks), once in full, once with LoRA adapters (--lora-rank, alpha twice the rank, every block
Linear) on the frozen model, and once with the adapters and the output head
(--lora-train-head). All are scored by the example's own function on the same held-out blocks.
Prints one JSON line. Run by hand (a quiet machine: minutes):

    .venv/bin/python bench/lora_eli5.py --json
    .venv/bin/python bench/lora_eli5.py --tiny --json   # a smoke run in seconds, measures nothing
"""

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import lmforge
from lmforge import progress

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpt2_finetune_eli5.py"


def _example():
    spec = importlib.util.spec_from_file_location("gpt2_finetune_eli5", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pretrain-steps", type=int, default=1000, help="as the example's default")
    ap.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning's lr (the example's)")
    ap.add_argument(
        "--lora-lr", type=float, default=3e-3, help="LoRA's lr (adapters start at zero: higher)"
    )
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--pretrained", default=None, help="a pretrained run to reuse (skips step 1)")
    ap.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="the fine-tuning budget of both, in steps (default: the example's 3 epochs)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="smoke run: the example's --tiny sizes")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ex = _example()
    size, vocab_size, budget = ex.SMALL, 4096, {}
    if args.tiny:
        size, vocab_size = ex.TINY, 512
        args.pretrain_steps = min(args.pretrain_steps, 30)
        budget = dict(max_steps=20, eval_every=10)
    if args.finetune_steps:
        budget = dict(max_steps=args.finetune_steps, eval_every=max(1, args.finetune_steps // 3))
    progress.enable(not args.json)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        pretrained = Path(args.pretrained) if args.pretrained else out / "pretrained"
        if args.pretrained is None:
            lmforge.train(
                data="tinyshakespeare", tokenizer="bpe", vocab_size=vocab_size, **size, lr=1e-3,
                warmup_steps=100, dropout=0.0, batching="windows", max_steps=args.pretrain_steps,
                eval_every=10_000, threads=args.threads, out=str(pretrained),
            )  # fmt: skip
        results = {}
        for name, extra in (
            ("full", dict(lr=args.lr)),
            ("lora", dict(lr=args.lora_lr, lora_rank=args.lora_rank)),
            ("lora_head", dict(lr=args.lora_lr, lora_rank=args.lora_rank, lora_train_head=True)),
        ):
            start = time.perf_counter()
            result = lmforge.train(
                init_from=str(pretrained),
                **{**ex.FINETUNE, **budget},
                **extra,
                threads=args.threads,
                out=str(out / name),
            )
            results[name] = {**result, "seconds": time.perf_counter() - start}
        tuned = out / "full"
        trainable = {}
        for name in results:
            model = lmforge.load(out / name)
            lora = [p for n, p in model.named_parameters() if ".lora_" in n]
            trainable[name] = sum(p.numel() for p in lora) if lora else model.num_params()
            if name == "lora_head":  # its own (untied) head trains in full too
                trainable[name] += model.head.weight.numel()
        row = {
            "shape": "tiny" if args.tiny else "small",
            "finetune_steps": results["full"]["steps"],
            "lora_rank": args.lora_rank,
            "lr": args.lr,
            "lora_lr": args.lora_lr,
            "eli5_val_perplexity_before": ex.held_out_perplexity(pretrained, tuned),
            "eli5_val_perplexity_full": ex.held_out_perplexity(out / "full", tuned),
            "eli5_val_perplexity_lora": ex.held_out_perplexity(out / "lora", tuned),
            "eli5_val_perplexity_lora_head": ex.held_out_perplexity(out / "lora_head", tuned),
            "trainable_params_full": trainable["full"],
            "trainable_params_lora": trainable["lora"],
            "trainable_params_lora_head": trainable["lora_head"],
            "tokens_per_s_full": results["full"]["tokens_per_s"],
            "tokens_per_s_lora": results["lora"]["tokens_per_s"],
            "seconds_full": round(results["full"]["seconds"], 1),
            "seconds_lora": round(results["lora"]["seconds"], 1),
        }
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")


if __name__ == "__main__":
    sys.exit(main())
