"""Workflow 4 at a small scale: pretrain a tiny GPT-2-shaped model on Tiny Shakespeare with a
byte-level BPE, fine-tune it on ELI5 answers, and report held-out ELI5 perplexity before and
after (and for the same model trained on ELI5 alone), then sample, beam-search and export it.

With real weights the fine-tuning step is the same call with init_from="distilgpt2"; this script
only stands in a small pretrained model because none can be downloaded here. The ELI5 records
are split once, by record: the held-out ones are never trained on (the script checks it), and
the pretrained model never saw ELI5 at all, not even in its tokenizer. Runs offline:

    .venv/bin/python examples/gpt2_finetune_eli5.py --out runs/eli5-demo
    .venv/bin/python examples/gpt2_finetune_eli5.py --tiny --out /tmp/eli5-smoke  # seconds
"""

import argparse
import json
import math
import time
from pathlib import Path

import lmforge
from lmforge import progress

# GPT-2's switches (pre-norm, tanh GELU, learned positions, tied embeddings, biases) come from the
# gpt2 preset; only the size is small: 4 x 128, context 128.
SMALL = dict(preset="gpt2", num_layers=4, embed_dim=128, num_heads=4, ffn_dim=512, max_seq_len=128)
# --tiny: a smoke run of the whole script in seconds; its perplexities mean nothing
TINY = dict(preset="gpt2", num_layers=2, embed_dim=64, num_heads=2, ffn_dim=256, max_seq_len=128)
# The Hugging Face course's recipe for distilgpt2 on ELI5 (dropout 0.1 as distilgpt2 ships)
FINETUNE = dict(
    data="eli5",
    field="answer",
    block_size=128,
    weight_decay=0.01,
    epochs=3,
    batch_size=8,
    warmup_steps=0,
    dropout=0.1,
)


def held_out_perplexity(model_or_run, run_with_data: Path) -> float:
    """Perplexity of a model on the ELI5 validation blocks that run_with_data was scored on."""
    from lmforge.data.prepare import PreparedData
    from lmforge.training.run_data import make_examples
    from lmforge.training.trainer import evaluate

    info = json.loads((run_with_data / "config.json").read_text())["data"]
    data = PreparedData(info["path"])
    examples = make_examples(data, "val", info["batching"], info["block_size"])
    model = lmforge.load(model_or_run) if isinstance(model_or_run, (str, Path)) else model_or_run
    return evaluate(model, examples, batch_size=16)["perplexity"]


def held_out_records(run_with_data: Path) -> dict:
    """How many ELI5 records were trained on and held out; fails if any held-out record (as
    token ids) is also among the training records."""
    from lmforge.data.prepare import PreparedData

    info = json.loads((run_with_data / "config.json").read_text())["data"]
    data = PreparedData(info["path"])
    train = {tuple(d) for d in data.documents("train")}
    val = [tuple(d) for d in data.documents("val")]
    leaked = sum(d in train for d in val)
    if leaked:
        raise SystemExit(f"{leaked} of {len(val)} held-out ELI5 records are also training records")
    return {"eli5_train_records": len(train), "eli5_held_out_records": len(val)}


def epoch_perplexities(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [math.exp(r["val_loss"]) for r in rows if "val_loss" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=f"runs/eli5-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument(
        "--pretrain-steps",
        type=int,
        default=1000,
        help="pretraining steps of 8 x 128 tokens (default 1000, about 3 epochs)",
    )
    ap.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="fine-tuning peak lr; 2e-5 is distilgpt2's, a 1M model needs more",
    )
    ap.add_argument("--skip-baseline", action="store_true", help="skip the ELI5-only model")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run in seconds: a 2 x 64 model, 30 pretraining and 20 fine-tuning steps, "
        "no baseline",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: all cores; 1 on a machine busy with other jobs)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    progress.enable(True)
    timings = {}
    size, vocab_size, budget = SMALL, 4096, {}
    if args.tiny:
        size, vocab_size, args.skip_baseline = TINY, 512, True
        args.pretrain_steps = min(args.pretrain_steps, 30)
        budget = dict(max_steps=20, eval_every=10)  # stops long before the 3 epochs

    t = time.perf_counter()
    pretrained = out / "pretrained"
    print(f"1. pretraining a GPT-2-shaped model on tinyshakespeare ({args.pretrain_steps} steps)")
    pre = lmforge.train(
        data="tinyshakespeare",
        tokenizer="bpe",
        vocab_size=vocab_size,
        **size,
        lr=1e-3,
        warmup_steps=100,
        dropout=0.0,
        batching="windows",
        max_steps=args.pretrain_steps,
        eval_every=10_000,
        threads=args.threads,
        out=str(pretrained),
    )
    timings["pretrain_s"] = time.perf_counter() - t
    print(f"   {pre['steps']} steps, Shakespeare val perplexity {pre['val_perplexity']:.1f}")

    t = time.perf_counter()
    tuned = out / "finetuned"
    length = f"{budget['max_steps']} steps" if budget else f"{FINETUNE['epochs']} epochs"
    print(f"2. fine-tuning it on ELI5 answers ({length}, lr {args.lr}) ...")
    result = lmforge.train(
        init_from=str(pretrained),
        **{**FINETUNE, **budget},
        lr=args.lr,
        threads=args.threads,
        out=str(tuned),
    )
    timings["finetune_s"] = time.perf_counter() - t
    report = {
        **held_out_records(tuned),
        # the same blocks and the same function score both, so the numbers compare
        "eli5_val_perplexity_before": held_out_perplexity(pretrained, tuned),
        "eli5_val_perplexity_per_epoch": epoch_perplexities(tuned),
        "eli5_val_perplexity_after": held_out_perplexity(tuned, tuned),
        "finetune_steps": result["steps"],
        "finetune_tokens_per_s": result["tokens_per_s"],
    }

    if not args.skip_baseline:
        t = time.perf_counter()
        scratch = out / "eli5-only"
        print("3. the same model trained on ELI5 alone, same budget, for comparison ...")
        tokenizer = pretrained / "tokenizer"  # the same tokens, so perplexities compare
        lmforge.train(
            tokenizer=str(tokenizer),
            **size,
            **FINETUNE,
            lr=args.lr,
            batching="blocks",
            threads=args.threads,
            out=str(scratch),
        )
        timings["eli5_only_s"] = time.perf_counter() - t
        report["eli5_only_val_perplexity"] = held_out_perplexity(scratch, tuned)

    prompt = "Why is the sky blue?"
    report["sample"] = lmforge.generate_text(
        str(tuned), prompt, max_new_tokens=60, top_k=50, top_p=0.95, seed=0
    )
    report["beam_search"] = lmforge.generate_text(
        str(tuned), prompt, max_new_tokens=40, num_beams=4, no_repeat_ngram_size=3
    )
    from lmforge.interop.hf import convert

    exported = convert(tuned, "hf", out / "hf", overwrite=True)
    try:
        import transformers

        pipe = transformers.pipeline("text-generation", model=str(exported))
        text = pipe(prompt, max_new_tokens=20, do_sample=False)[0]["generated_text"]
        report["transformers_pipeline"] = text
    except ImportError:
        report["transformers_pipeline"] = None
    report.update({k: round(v, 1) for k, v in timings.items()})
    print(json.dumps(report, indent=1, ensure_ascii=False))
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
