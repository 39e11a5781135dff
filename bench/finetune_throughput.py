"""Fine-tuning throughput at the distilgpt2 shape: lmforge's train_step vs transformers'
GPT2LMHeadModel in a plain loop, same weights, optimizer (AdamW 2e-5, weight decay 0.01, fused
where torch has it), dropout 0.1, gradient clipping and precision.

Both start from the same Hugging Face folder (random weights, saved once). Each contender runs in
its own fresh process, alternated A B A B ..., so peak RSS is its own and drift between runs
hits both; medians are compared. Both get the same batch of token ids, the same number of
targets (our labels come shifted, transformers shifts inside its loss) and the same untimed
warm-up steps (the first step allocates the optimizer state). Run by hand:

    .venv/bin/python bench/finetune_throughput.py --json
    .venv/bin/python bench/finetune_throughput.py --tiny --json   # a seconds-long smoke run
    .venv/bin/python bench/finetune_throughput.py --lora --json   # + LoRA beside full fine-tuning

--lora adds a third contender, lmforge with LoRA adapters (rank --lora-rank, alpha twice that,
every block Linear) on the frozen model, and reports its peak RSS over full fine-tuning's
(`memory_ratio_vs_full`) and full fine-tuning's step time over its own (`speedup_vs_full`).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import machine_fields, median_step_s, use_all_cpus

SHAPE = dict(batch=8, block=128)
# --tiny: GPT-2's switches at a size that runs in seconds (a smoke run, not a number)
TINY = dict(
    vocab_size=1000,
    n_positions=128,
    n_embd=64,
    n_head=2,
    n_layer=2,
    bos_token_id=999,
    eos_token_id=999,
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_folder(folder: Path, num_layers: int, tiny: bool = False) -> None:
    """A distilgpt2-shaped Hugging Face folder with random weights (dropout 0.1, as shipped)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(**TINY) if tiny else GPT2Config(n_layer=num_layers)
    GPT2LMHeadModel(config).save_pretrained(folder)


def run_one(kind: str, folder: str, steps: int, warmup: int, lora_rank: int = 8) -> dict:
    """Time `steps` fine-tuning steps of one contender in this process."""
    import torch

    from lmforge import device as devices
    from lmforge.training.trainer import TrainConfig, make_optimizer, train_step

    use_all_cpus()
    torch.manual_seed(0)
    B, T = SHAPE["batch"], SHAPE["block"]
    vocab_size = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab_size, (B, T))
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100)], dim=1)  # ours: already shifted
    cfg = TrainConfig(lr=2e-5, weight_decay=0.01)
    precision = devices.resolve_precision("auto", torch.device("cpu"))
    if kind in ("lmforge", "lora"):
        import lmforge

        model = lmforge.load(folder).train()
        batch = {"token_ids": ids, "labels": labels}
        if kind == "lora":  # what `train --lora-rank R` does to the model
            from lmforge.layers.lora import apply_lora

            apply_lora(model, lora_rank, 2.0 * lora_rank, targets="all-linear")
    else:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(folder).train()
        batch = {"input_ids": ids, "labels": ids}  # transformers shifts inside the loss
    optimizer = make_optimizer(model, cfg)  # the same AdamW and parameter groups for both

    if kind in ("lmforge", "lora"):

        def step():
            train_step(model, batch, optimizer, precision=precision, grad_clip=1.0)
    else:

        def step():
            with devices.autocast(torch.device("cpu"), precision):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    s = median_step_s(step, warmup, steps)
    return {
        "kind": kind,
        "precision": precision,
        "s_per_step": s,
        "tokens_per_s": B * T / s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per trial")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--trials", type=int, default=3, help="fresh processes per contender")
    ap.add_argument("--num-layers", type=int, default=6, help="6: distilgpt2, 12: gpt2")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run: a 2 x 64 model, 1 trial of 2 steps (checks the script, measures nothing)",
    )
    ap.add_argument(
        "--lora",
        action="store_true",
        help="also time LoRA fine-tuning of the same model (memory_ratio_vs_full, speedup_vs_full)",
    )
    ap.add_argument("--lora-rank", type=int, default=8, help="the LoRA contender's rank")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = run_one(args.one, args.folder, args.steps, args.warmup, args.lora_rank)
        print(json.dumps(row))
        return
    if args.tiny:
        args.steps, args.warmup, args.trials = 2, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2"
        _save_folder(folder, args.num_layers, args.tiny)
        results = {"lmforge": [], "hf": [], **({"lora": []} if args.lora else {})}
        for _ in range(args.trials):
            for kind in results:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    kind,
                    "--folder",
                    str(folder),
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--lora-rank",
                    str(args.lora_rank),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    use_all_cpus()  # as each contender's process did: machine_fields() reports it
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    rss = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    row = {
        "shape": "tiny"
        if args.tiny
        else ("distilgpt2" if args.num_layers == 6 else f"gpt2-{args.num_layers}l"),
        "batch": SHAPE["batch"],
        "block": SHAPE["block"],
        "precision": results["lmforge"][0]["precision"],
        "hf_precision": results["hf"][0]["precision"],
        "tokens_per_s": med["lmforge"],
        "hf_tokens_per_s": med["hf"],
        "speedup_vs_hf": med["lmforge"] / med["hf"],
        "peak_rss_mb": rss["lmforge"],
        "hf_peak_rss_mb": rss["hf"],
        "all_tokens_per_s": {
            k: [round(r["tokens_per_s"], 1) for r in v] for k, v in results.items()
        },
        "trials": args.trials,
        "steps": args.steps,
        **machine_fields(),
    }
    if args.lora:
        row.update(
            {
                "lora_rank": args.lora_rank,
                "lora_tokens_per_s": med["lora"],
                "lora_peak_rss_mb": rss["lora"],
                "memory_ratio_vs_full": rss["lora"] / rss["lmforge"],
                "speedup_vs_full": med["lora"] / med["lmforge"],  # tokens/s ratio = step time's
            }
        )
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>18}: {v:.4g}" if isinstance(v, float) else f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
