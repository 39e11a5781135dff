"""Workflow 1: a one-block GPT trained from scratch on wine reviews, then sampled and inspected.

Each review reads "wine review : <country> : <province> : <variety> : <description>", lower-cased,
punctuation split off (10,000-word vocabulary), padded/truncated to 80 tokens; preset gpt-tiny-wine.

    LMFORGE_DATA_DIR=../shared/data .venv/bin/python examples/gpt_wine_reviews.py --figures docs
"""

import argparse
import math
import time
from pathlib import Path

import lmforge
from lmforge import progress
from lmforge.data.corpus import open_source
from lmforge.device import set_threads
from lmforge.generation.generate import generate_texts
from lmforge.inspect import render
from lmforge.inspect.next_token import inspect_prompt
from lmforge.inspect.plot import plot_losses, read_metrics

TEMPLATE = "wine review : {country} : {province} : {variety} : {description}"
SAMPLE_PROMPTS = ["wine review : germany", "wine review : italy", "wine review : us : california"]
INSPECT_PROMPTS = [
    "wine review : us",
    "wine review : italy : tuscany : sangiovese :",
    "wine review : germany : mosel : riesling : this wine is dry , with flavors of",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="wine-reviews", help="dataset name or Kaggle CSV/JSON file")
    ap.add_argument("--out", default=f"runs/wine-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--epochs", type=float, default=5, help="passes over the data (tutorial: 5)")
    ap.add_argument("--max-time", default=None, help="wall-time budget instead, e.g. 3m")
    ap.add_argument("--figures", default=None, help="folder for the report and PNGs (default: run)")
    ap.add_argument("--num-samples", type=int, default=2, help="samples per prompt and temperature")
    ap.add_argument("--reuse", action="store_true", help="skip training: use the run in --out")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: all cores; 1 on a busy machine)",
    )
    args = ap.parse_args()
    progress.enable(True)

    # Two evaluations per epoch, whatever the size of the file (2,191 reviews or all 129,971).
    num_docs = sum(1 for _ in open_source(args.data, field=TEMPLATE).iter_documents())
    steps_per_epoch = math.ceil(num_docs * 0.9 / 32)  # 10% held out, batch 32 (the preset's)
    budget = dict(max_time=args.max_time) if args.max_time else dict(epochs=args.epochs)
    if not args.reuse:
        print(f"{num_docs:,} reviews; training gpt-tiny-wine ({budget}) -> {args.out}")
        lmforge.train(
            data=args.data,
            tokenizer="word",
            vocab_size=10_000,
            field=TEMPLATE,
            preset="gpt-tiny-wine",
            out=args.out,
            eval_every=max(10, steps_per_epoch // 2),
            threads=args.threads,
            **budget,
        )
    final = read_metrics(args.out).val[-1]  # the last evaluation covers the whole val split
    print(
        f"\n{final['step']} steps, {final['elapsed_s']:.0f} s: validation loss "
        f"{final['val_loss']:.3f} (perplexity {math.exp(final['val_loss']):.1f})"
    )

    set_threads(args.threads)  # for sampling after --reuse too
    model, tok = lmforge.load(args.out), lmforge.load_tokenizer(args.out)
    figures = Path(args.figures or args.out)
    figures.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, prompt in enumerate(SAMPLE_PROMPTS):
        room = model.config.max_seq_len - len(tok.encode(prompt))  # reviews are 80 tokens long
        for temperature in (1.0, 0.5):  # same seed: only the temperature differs
            texts = generate_texts(
                model, tok, prompt, room, num_samples=args.num_samples, temperature=temperature,
                seed=index,
            )  # fmt: skip
            lines.append(f"--- {prompt!r}, temperature {temperature} ---")
            lines += [f"{prompt} {text}" for text in texts]
    samples = "\n".join(lines) + "\n"
    print("\n" + samples)
    (figures / "wine-samples.txt").write_text(samples, encoding="utf-8")

    seen = [inspect_prompt(model, tok, prompt, k=5) for prompt in INSPECT_PROMPTS]
    for s in seen:
        table = ", ".join(f"{t.token} {t.prob:.2f}" for t in s.next_tokens)
        print(f"\nnext after {s.prompt!r}: {table}")
    about = (
        f"gpt-tiny-wine trained {final['step']} steps on {num_docs:,} reviews; "
        f"validation loss {final['val_loss']:.3f}"
    )
    report = render.write_html_report(
        seen, figures / "wine-attention.html", title="wine-review GPT: attention", about=about
    )
    pngs = render.save_attention_pngs(seen, figures / "wine-attention")
    curve = plot_losses([args.out], figures / "wine-loss.png", x="tokens")
    print(f"\nwrote {report}, {curve}, wine-samples.txt and {len(pngs)} heatmaps in {figures}")


if __name__ == "__main__":
    main()
