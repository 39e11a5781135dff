"""Data-parallel scaling on this machine: tokens/s of 1 and 2 processes (1 thread each) under
torchrun with gloo, same global batch, and the scaling efficiency. On 2 CPU cores this mostly
shows the cost of the gradient all-reduce path. Run by hand:

    .venv/bin/python bench/ddp_scaling.py --json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _timing import machine_fields


def run(nproc: int, data: str, out: str, steps: int, preset: str) -> tuple[float, str]:
    """Median steady-state tokens/s of one torchrun, and the precision the run trained in."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lmforge",
        "train",
        "--data",
        data,
        "--tokenizer",
        "char",
        "--preset",
        preset,
        "--threads",
        "1",
        "--max-steps",
        str(steps),
        "--global-batch-size",
        "24",
        "--batch-size",
        str(24 // nproc),
        "--eval-every",
        "100000",
        "--eval-tokens",
        "2048",
        "--out",
        out,
        "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    # steady state: skip the first logged interval (start-up, first allocations)
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    precision = json.loads(done.stdout.strip().splitlines()[-1])["precision"]
    return statistics.median(rates), precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="tinyshakespeare")
    ap.add_argument("--preset", default="gpt-baby")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    one, two, precisions = [], [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(args.trials):
            for runs, nproc, name in ((one, 1, "one"), (two, 2, "two")):
                rate, precision = run(nproc, args.data, f"{tmp}/{name}{t}", args.steps, args.preset)
                runs.append(rate)
                precisions.add(precision)
    row = {
        "preset": args.preset,
        "global_batch": 24,
        "tokens_per_s_1proc": statistics.median(one),
        "tokens_per_s_2proc": statistics.median(two),
    }
    row["speedup_vs_1proc"] = row["tokens_per_s_2proc"] / row["tokens_per_s_1proc"]
    row["scaling_efficiency"] = row["speedup_vs_1proc"] / 2
    row.update(machine_fields(), threads=1)  # per process: `--threads 1` in each
    row["precision"] = "/".join(sorted(precisions))
    print(json.dumps(row) if args.json else "\n".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
