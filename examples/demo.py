"""The README's main job: train the `gpt-baby` preset on Python's own standard library for about
two minutes (characters), then print samples. Runs offline on any machine with Python.

    make demo            # or: .venv/bin/python examples/demo.py --max-time 2m
"""

import argparse
import logging
import time

import lmforge
from lmforge import progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-time", default="2m", help="training budget (default: 2m)")
    ap.add_argument("--out", default=f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()

    progress.enable(True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # evaluations, warnings
    print(f"training gpt-baby on the python-stdlib corpus for {args.max_time} -> {args.out}")
    result = lmforge.train(
        data="python-stdlib",
        tokenizer="char",
        preset="gpt-baby",
        out=args.out,
        max_time=args.max_time,
        eval_every=500,
    )
    print(
        f"\n{result['steps']} steps, {result['tokens_per_s']:,.0f} tokens/s, validation loss "
        f"{result['val_loss']:.3f} ({result['val_bits_per_char']:.2f} bits/char)\n"
    )
    model, tok = lmforge.load(args.out), lmforge.load_tokenizer(args.out)
    for index, prompt in enumerate(("def ", "class ", "import ")):
        # a seed per prompt: with one seed for all, a young model gives each prompt the same
        # random draws, and so often the same continuation
        text = lmforge.generate_text(
            model, prompt, tok, max_new_tokens=240, temperature=0.8, top_k=40, seed=1 + index
        )
        print(f"--- prompt {prompt!r} ---\n{prompt}{text}\n")
    print(f"more samples: .venv/bin/lmforge sample {args.out} --prompt 'def ' --num-samples 3")


if __name__ == "__main__":
    main()
