"""The token-budget table behind lmforge/training/budget.py: each candidate size (and dropout) of
a budgeted preset trained on Tiny Shakespeare for several --max-tokens budgets, steps-matched
(each run's warm-up and cosine span its own budget), validation loss on the whole split.

Token budgets do not depend on the machine's speed, so the table can be made on a busy one.
Runs go one at a time; finished ones are kept in --out-json and skipped when it runs again.
A preset with a constant learning rate and no warm-up (the char-RNN tutorial recipe) trains each
size once, to the largest budget, scoring the whole validation split at every budget: with
nothing that depends on the budget, a run stopped at T tokens is that run's first T tokens.

    python bench/budget_table.py --preset gpt-baby --tokens 500000 1000000 --json
    python bench/budget_table.py --preset char-rnn-lstm-shakespeare --sizes 256 512 \
        --tokens 1280000 2560000
"""

import argparse
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

import _timing

import lmforge
from lmforge.files import write_atomic
from lmforge.presets import build_task, get_preset
from lmforge.training.budget import candidate_model, size_name


def run_one(preset: str, shape: dict, tokens: int, dropout: float, data: str, threads: int):
    """Train one cell of the table (auto choice off: the cell's size is the point); its row."""
    with tempfile.TemporaryDirectory() as tmp:
        result = lmforge.train(
            **_cell_options(preset, shape, dropout, data, threads, tmp),
            max_tokens=tokens,
            eval_every=500,
            eval_tokens=30_000,
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


def run_curve(preset: str, shape: dict, budgets: list[int], dropout: float, data, threads: int):
    """The rows of every budget from one constant-rate run to the largest, which scores the
    whole validation split at each budget's step: what a run stopped there keeps (the best
    evaluation so far) and ends with."""
    per_step = get_preset(preset)["train"]["batch_size"] * get_preset(preset)["train"]["block_size"]
    ends = [math.ceil(t / per_step) for t in budgets]
    with tempfile.TemporaryDirectory() as tmp:
        result = lmforge.train(
            **_cell_options(preset, shape, dropout, data, threads, tmp),
            max_tokens=max(budgets),
            eval_every=math.gcd(*ends),
            eval_tokens=None,
            save_every_epoch=False,
        )
        metrics = Path(tmp, "run", "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in metrics]
    evals = {m["step"]: m["val_loss"] for m in metrics if "val_loss" in m}
    rows = []
    for tokens, end in zip(budgets, ends):
        best = min((s for s in evals if s <= end), key=lambda s: (evals[s], -s))
        trained = [m["train_loss"] for m in metrics if "train_loss" in m and m["step"] <= end]
        rows.append(
            {
                "preset": preset,
                **shape,
                "dropout": dropout,
                "max_tokens": tokens,
                "val_loss": round(evals[best], 4),
                "final_val_loss": round(evals[end], 4),
                "best_step": best,
                "steps": end,
                "train_loss": round(trained[-1], 4),
                "tokens_per_s": round(result["tokens_per_s"]),
            }
        )
    return rows


def _cell_options(preset: str, shape: dict, dropout: float, data: str, threads: int, tmp: str):
    return dict(
        data=data,
        tokenizer="char",
        preset=preset,
        **shape,
        dropout=dropout,
        auto=False,
        threads=threads,
        out=str(Path(tmp) / "run"),
    )


def markdown(rows: list[dict]) -> str:
    """The README's table: one line per run."""
    lines = [
        "| preset | size | params | dropout | tokens | tokens/param | val (kept) | val (last) "
        "| train |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["preset"], r["max_tokens"], r["params"], r["dropout"])):
        lines.append(
            f"| {r['preset']} | {size_name(r)} | {r['params'] / 1e6:.2f}M "
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
        metavar="LAYERSxDIM|UNITS",
        help="sizes to train instead of the preset's candidates: GPT LAYERSxDIM (heads of 32, "
        "FFN 4 x DIM), char-RNN UNITS",
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
    shapes = preset.get("candidates", [])
    if args.sizes and preset["family"] == "char_rnn":
        shapes = [dict(hidden_dim=int(size)) for size in args.sizes]
    elif args.sizes:
        layers_dims = [tuple(int(n) for n in size.split("x")) for size in args.sizes]
        shapes = [
            dict(num_layers=n, embed_dim=c, num_heads=c // 32, ffn_dim=4 * c)
            for n, c in layers_dims
        ]
    recipe = preset.get("train", {})
    is_curve = recipe.get("schedule") == "constant" and recipe.get("warmup_steps") == 0
    for shape in shapes:
        for dropout in args.dropout:
            key = dict(preset=args.preset, **shape, dropout=dropout)
            done = {
                r["max_tokens"] for r in table["rows"] if all(r.get(k) == v for k, v in key.items())
            }
            todo = [t for t in args.tokens if t not in done]
            if not todo:
                continue
            params = build_task(preset["family"], candidate_model(config, shape)).num_params()
            if is_curve:  # one run gives every budget's row
                rows = run_curve(args.preset, shape, todo, dropout, args.data, args.threads)
            else:  # one run per budget, each row kept as soon as it is made
                rows = (
                    run_one(args.preset, shape, t, dropout, args.data, args.threads) for t in todo
                )
            for row in rows:
                row = {**row, "params": params}
                table["rows"].append(row)
                write_atomic(out, json.dumps(table, indent=1) + "\n")
                if args.json:
                    print(json.dumps(row), flush=True)
    print(markdown(table["rows"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
