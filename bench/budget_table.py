"""The token-budget table behind lmforge/training/budget.py: each candidate size (and dropout) of
a budgeted preset trained on Tiny Shakespeare for several --max-tokens budgets, steps-matched
(each run's warm-up and cosine span its own budget), validation loss on the whole split.

Token budgets do not depend on the machine's speed, so the table can be made on a busy one.
Runs go one at a time; finished ones are kept in --out-json and skipped when it runs again.

    python bench/budget_table.py --preset gpt-baby --tokens 500000 1000000 --json
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import _timing

import lmforge
from lmforge.files import write_atomic
from lmforge.presets import build_task, get_preset


def run_one(preset: str, shape: dict, tokens: int, dropout: float, data: str, threads: int):
    """Train one cell of the table (auto choice off: the cell's size is the point); its row."""
    with tempfile.TemporaryDirectory() as tmp:
        result = lmforge.train(
            data=data,
            tokenizer="char",
            preset=preset,
            **shape,
            dropout=dropout,
            max_tokens=tokens,
            auto=False,
            eval_every=500,
            eval_tokens=30_000,
            threads=threads,
            out=str(Path(tmp) / "run"),
        )
    return {
        "preset": preset,
        **shape,
        "dropout": dropout,
        "max_tokens": tokens,
        "val_loss": round(result["val_loss"], 4),
        "final_val_loss": round(result["final_val_loss"], 4),
        "best_step": result["best_step"],
        "steps": result["steps"],
        "train_loss": round(result["train_loss"], 4),
        "tokens_per_s": round(result["tokens_per_s"]),
    }


def markdown(rows: list[dict]) -> str:
    """The README's table: one line per run."""
    lines = [
        "| preset | size | params | dropout | tokens | tokens/param | val (kept) | val (last) "
        "| train |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["preset"], r["max_tokens"], r["params"], r["dropout"])):
        lines.append(
            f"| {r['preset']} | {r['num_layers']} x {r['embed_dim']} | {r['params'] / 1e6:.2f}M "
            f"| {r['dropout']:g} | {r['max_tokens'] / 1e6:g}M "
            f"| {r['max_tokens'] / r['params']:.2f} | {r['val_loss']:.3f} "
            f"| {r['final_val_loss']:.3f} | {r['train_loss']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-baby")
    p.add_argument("--tokens", type=int, nargs="+", default=[500_000, 1_000_000])
    p.add_argument("--dropout", type=float, nargs="+", default=[0.0])
    p.add_argument(
        "--sizes",
        nargs="+",
        metavar="LAYERSxDIM",
        help="GPT sizes to train instead of the preset's candidates (heads of 32, FFN 4 x DIM)",
    )
    p.add_argument("--data", default="tinyshakespeare")
    p.add_argument("--threads", type=int, default=1, help="1 keeps a shared machine usable")
    p.add_argument("--out-json", default="docs/budget_table.json")
    p.add_argument("--json", action="store_true", help="print each row as one JSON line")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # each evaluation, as it comes
    out = Path(args.out_json)
    table = json.loads(out.read_text()) if out.exists() else {"rows": []}
    table["machine"] = _timing.machine_fields()
    preset = get_preset(args.preset)
    config = {**preset["config"], "vocab_size": 65}
    shapes = preset["candidates"]
    if args.sizes:
        layers_dims = [tuple(int(n) for n in size.split("x")) for size in args.sizes]
        shapes = [
            dict(num_layers=n, embed_dim=c, num_heads=c // 32, ffn_dim=4 * c)
            for n, c in layers_dims
        ]
    for tokens in args.tokens:
        for shape in shapes:
            for dropout in args.dropout:
                key = dict(preset=args.preset, **shape, dropout=dropout, max_tokens=tokens)
                if any(all(r.get(k) == v for k, v in key.items()) for r in table["rows"]):
                    continue
                params = build_task(preset["family"], {**config, **shape}).num_params()
                row = run_one(args.preset, shape, tokens, dropout, args.data, args.threads)
                row = {**row, "params": params}
                table["rows"].append(row)
                write_atomic(out, json.dumps(table, indent=1) + "\n")
                if args.json:
                    print(json.dumps(row), flush=True)
    print(markdown(table["rows"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
