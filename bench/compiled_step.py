"""A budgeted run's compiled CPU training step, with lmforge's two CPU paths and with torch's own.

The step is the one `lmforge train --preset gpt-shakespeare --max-time 30m` trains on an AMX
Xeon: 8 x 256 at context 512, batch 3, dropout 0.1 on the embeddings and residual branches
(attention 0), Muon with weight decay 0.5, grad clip 1, `--precision auto`, torch.compile, timed
through lmforge.training.loop.train_step. Contenders, alternated in fresh processes:

- `lmforge`: with the hashed dropout mask (lmforge/layers/dropout.py) and the causal-attention
  backward for compiled bf16 CPU training (lmforge/layers/cpu_attention.py), without Canon
  layers: as 8 x 256 trains;
- `torch_paths`: the same model and compile with both switched off (torch's dropout and SDPA);
- `canon`: lmforge's paths on the same model with Canon layers of width 4 (`--canon 4`): as
  gpt-shakespeare's 4 x 128 trains (with `--shape 4x128` its step is `canon_ms_per_step`; there
  torch's paths change nothing, no dropout and fp32).

`speedup_vs_torch_paths` is the ratio of the medians; `canon_step_ratio` what Canon layers would
cost this step (canon's median over lmforge's); `fraction_of_matmul_peak` puts the model's
FLOPs per second against a 1024^3 matmul's in the step's precision, measured in the same run.
`--shape 4x128` times gpt-shakespeare's own 4 x 128 instead (context 128, batch 12, no dropout:
what a slow CPU's 10-minute budget trains). Run by hand:

    .venv/bin/python bench/compiled_step.py --json
    .venv/bin/python bench/compiled_step.py --shape 4x128 --json
"""

import argparse
import json
import statistics
import subprocess
import sys

from _timing import machine_fields, median_step_s, print_row, use_all_cpus
from train_throughput import _matmul_peak

# --shape: (model shape, batch, dropout); 4x128 is gpt-shakespeare's own model at context 128
_8X256 = dict(num_layers=8, embed_dim=256, num_heads=8, ffn_dim=1024, max_seq_len=512)
_4X128 = dict(num_layers=4, embed_dim=128, num_heads=4, ffn_dim=512, max_seq_len=128)
SHAPES = {"8x256": (_8X256, 3, 0.1), "4x128": (_4X128, 12, 0.0)}
VOCAB = 65


def run_one(kind: str, steps: int, warmup: int, shape: str = "8x256") -> dict:
    """Time `steps` compiled training steps of one contender in this process."""
    import torch
    import torch.nn.functional as F

    from lmforge import device as devices
    from lmforge.layers import cpu_attention
    from lmforge.layers import dropout as dropout_module
    from lmforge.presets import build_task, get_preset
    from lmforge.training.optim import make_optimizer
    from lmforge.training.trainer import train_step

    if kind == "torch_paths":
        cpu_attention.wanted = lambda *args: False
        dropout_module.Dropout.forward = lambda self, x: F.dropout(x, self.p, self.training)
    use_all_cpus()
    torch.manual_seed(0)
    size, batch_size, dropout = SHAPES[shape]
    config = {**get_preset("gpt-shakespeare")["config"], **size, "vocab_size": VOCAB}
    config["canon"] = 4 if kind == "canon" else 0  # the 8 x 256 candidate trains without
    task = build_task("gpt", {**config, "dropout": dropout, "attention_dropout": 0.0}).train()
    precision = devices.resolve_precision("auto", torch.device("cpu"), task)
    opt = make_optimizer(task, 5e-3, 0.5, (0.9, 0.99), kind="muon")
    devices.separate_compile_cache()  # as lmforge's runs compile: a cache per CPU kernels
    loss_fn = torch.compile(task.loss)
    x = torch.randint(0, VOCAB, (batch_size, size["max_seq_len"]))
    batch = {"token_ids": x, "labels": torch.roll(x, -1, 1)}

    def step():
        train_step(task, batch, opt, precision=precision, grad_clip=1.0, loss_fn=loss_fn)

    s = median_step_s(step, warmup, steps)
    return {"kind": kind, "precision": precision, "s_per_step": s, "params": task.num_params()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per trial")
    ap.add_argument("--trials", type=int, default=2, help="fresh processes per contender")
    ap.add_argument("--shape", choices=SHAPES, default="8x256", help="the model and batch")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, warmup=5, shape=args.shape)))
        return
    kinds = ["lmforge", "torch_paths", "canon"]
    results = {k: [] for k in kinds}
    for _ in range(args.trials):
        for kind in kinds:
            cmd = [sys.executable, __file__, "--one", kind, "--steps", str(args.steps)]
            cmd += ["--shape", args.shape]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    use_all_cpus()
    med = {k: statistics.median(r["s_per_step"] for r in v) for k, v in results.items()}
    ours = results["lmforge"][0]
    peak = _matmul_peak("bfloat16" if ours["precision"] == "bf16" else "float32")
    c, batch, _ = SHAPES[args.shape]
    block = c["max_seq_len"]
    # Model FLOPs per token: 6 * params (matmuls, fwd + bwd) + attention (6 * L * T * C, causal).
    flops_tok = 6 * ours["params"] + 6 * c["num_layers"] * block * c["embed_dim"]
    tokens_per_s = batch * block / med["lmforge"]
    row = {
        "shape": f"{c['num_layers']} x {c['embed_dim']}, context {block}, batch {batch}",
        "precision": ours["precision"],
        "params": ours["params"],
        "ms_per_step": 1000 * med["lmforge"],
        "tokens_per_s": tokens_per_s,
        "torch_paths_ms_per_step": 1000 * med["torch_paths"],
        "torch_paths_tokens_per_s": batch * block / med["torch_paths"],
        "speedup_vs_torch_paths": med["torch_paths"] / med["lmforge"],
        "canon_ms_per_step": 1000 * med["canon"],
        "canon_step_ratio": med["canon"] / med["lmforge"],
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_matmul_peak": tokens_per_s * flops_tok / peak,
        "trials": args.trials,
        "steps": args.steps,
    } | machine_fields()
    print_row(row, args.json)


if __name__ == "__main__":
    main()
