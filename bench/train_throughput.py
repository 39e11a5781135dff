"""Training throughput: lmforge exactly as `lmforge train --preset NAME` runs it, vs plain eager
fp32 PyTorch (the same model, nanoGPT style) vs Hugging Face GPT-2 (LlamaForCausalLM of the same
shape for a llama preset, which has no eager row: transformers' Llama is that plain model).

lmforge's row uses the preset's own recipe (optimizer, e.g. Muon for gpt-baby; weight decay;
grad clip; batch and block; `--precision auto`); a second row, `lmforge_adamw`, is the same with
the contenders' AdamW, to separate the optimizer's cost from the rest. The eager contender builds
the same architecture (biases or not, activation, tied head: the parameter count is checked
equal); transformers' GPT-2 always has biases, so its parameter count is reported beside ours.
Each contender runs in its own fresh process, alternated A B C A B C ..., and the medians are
compared (this machine's speed drifts by tens of percent between runs). Run by hand:

    .venv/bin/python bench/train_throughput.py --preset gpt-baby --json
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

from _timing import machine_fields, median_step_s, use_all_cpus

SHAPES = {
    "gpt-baby": dict(batch=12, block=64, vocab=65),
    "gpt2": dict(batch=4, block=256, vocab=50257),
    "distilgpt2": dict(batch=8, block=128, vocab=50257),
    "smollm2-135m": dict(batch=4, block=256, vocab=49152),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _matmul_peak(dtype_name: str) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0 or reps < 3:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _lmforge_recipe(preset: str, vocab: int):
    """(model, TrainConfig) as `lmforge train --preset NAME` builds them (preset < defaults)."""
    from lmforge.presets import build_task
    from lmforge.training.trainer import resolve_options

    cfg, model_over, spec = resolve_options({"preset": preset})
    model = build_task(spec["family"], {**spec["config"], **model_over, "vocab_size": vocab})
    return model, cfg


def _plain_model(preset: str, vocab: int):
    """A from-scratch GPT as the common recipes write it (nanoGPT style), fp32, eager."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from lmforge.presets import get_preset

    c = get_preset(preset)["config"]
    E, H, L, T = c["embed_dim"], c["num_heads"], c["num_layers"], c["max_seq_len"]
    bias = c.get("use_bias", True)
    act = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}
    act = act[c.get("activation", "gelu")]
    if not c.get("norm_first", True) or c.get("position", "learned") != "learned":
        raise SystemExit(f"{preset}: the eager contender is a pre-norm GPT with learned positions")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(E, bias=bias), nn.LayerNorm(E, bias=bias)
            self.qkv, self.proj = nn.Linear(E, 3 * E, bias=bias), nn.Linear(E, E, bias=bias)
            self.fc = nn.Linear(E, c["ffn_dim"], bias=bias)
            self.out = nn.Linear(c["ffn_dim"], E, bias=bias)

        def forward(self, x):
            B, S, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(E, dim=2)
            q, k, v = (t.view(B, S, H, E // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, S, E))
            return x + self.out(act(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, E), nn.Embedding(T, E)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln, self.head = nn.LayerNorm(E, bias=bias), nn.Linear(E, vocab, bias=False)
            self.head.weight = self.tok.weight

        def forward(self, idx, targets):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            logits = self.head(self.ln(x))
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    return GPT()


def _hf_model(preset: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.presets import get_preset

    c = get_preset(preset)["config"]
    if get_preset(preset)["family"] == "llama":
        return _hf_llama(c, vocab)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=c["max_seq_len"],
        n_embd=c["embed_dim"],
        n_layer=c["num_layers"],
        n_head=c["num_heads"],
        n_inner=c["ffn_dim"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).train()


def _hf_llama(c: dict, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=c["embed_dim"],
        intermediate_size=c["ffn_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_heads"],
        num_key_value_heads=c["num_kv_heads"],
        max_position_embeddings=c["max_seq_len"],
        rms_norm_eps=c["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_base"]},
        tie_word_embeddings=c["tie_embeddings"],
    )
    return LlamaForCausalLM(cfg).train()


def run_one(kind: str, preset: str, steps: int, warmup: int) -> dict:
    """Time `steps` training steps of one contender in this process."""
    import torch

    use_all_cpus()
    torch.manual_seed(0)
    shape = SHAPES[preset]
    B, T, V = shape["batch"], shape["block"], shape["vocab"]
    x = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    optimizer = "adamw"
    if kind in ("lmforge", "lmforge_adamw"):
        import dataclasses

        from lmforge import device as devices
        from lmforge.training.trainer import make_optimizer, train_step

        model, cfg = _lmforge_recipe(preset, V)
        model.train()
        if kind == "lmforge_adamw":
            cfg = dataclasses.replace(cfg, optimizer="adamw")
        optimizer = cfg.optimizer
        precision = devices.resolve_precision(cfg.precision, torch.device("cpu"), model)
        opt = make_optimizer(model, cfg)
        batch = {"token_ids": x, "labels": y}

        def step():
            train_step(model, batch, opt, precision=precision, grad_clip=cfg.grad_clip)
    elif kind == "eager":
        model = _plain_model(preset, V).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        precision = "fp32"

        def step():
            loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        from lmforge import device as devices

        model = _hf_model(preset, V)
        precision = devices.resolve_precision("auto", torch.device("cpu"), model)  # as ours
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            with devices.autocast(torch.device("cpu"), precision):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    s = median_step_s(step, warmup, steps)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "kind": kind,
        "precision": precision,
        "optimizer": optimizer,
        "s_per_step": s,
        "tokens_per_s": B * T / s,
        "peak_rss_mb": _peak_rss_mb(),
        "params": n_params,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="gpt-baby", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per trial")
    ap.add_argument("--trials", type=int, default=3, help="fresh processes per contender")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    big = args.preset != "gpt-baby"
    steps = args.steps or (4 if big else 40)
    if args.one:
        print(json.dumps(run_one(args.one, args.preset, steps, 2 if big else 10)))
        return

    from lmforge.presets import get_preset

    llama = get_preset(args.preset)["family"] == "llama"
    try:
        import transformers  # noqa: F401

        kinds = ["lmforge", "lmforge_adamw", "eager", "hf"]
    except ImportError:
        kinds = ["lmforge", "lmforge_adamw", "eager"]
    if llama:  # no eager contender: transformers' LlamaForCausalLM is the plain model
        kinds.remove("eager")
    results = {k: [] for k in kinds}
    for _ in range(args.trials):
        for kind in kinds:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--preset",
                    args.preset,
                    "--one",
                    kind,
                    "--steps",
                    str(steps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))

    use_all_cpus()
    peak_bf16, peak_fp32 = _matmul_peak("bfloat16"), _matmul_peak("float32")
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    ours = results["lmforge"][0]
    same = "hf" if llama else "eager"  # the contender built with exactly our parameters
    if same in results and results[same][0]["params"] != ours["params"]:
        raise SystemExit(
            f"the {same} model differs from lmforge's: {results[same][0]['params']}"
            f" vs {ours['params']} parameters"
        )
    shape = SHAPES[args.preset]
    # Model FLOPs per token: 6 * params (matmuls, fwd + bwd) + attention (6 * L * T * C, causal).
    c = get_preset(args.preset)["config"]
    flops_tok = 6 * ours["params"] + 6 * c["num_layers"] * shape["block"] * c["embed_dim"]
    row = {
        "preset": args.preset,
        "batch": shape["batch"],
        "block": shape["block"],
        "precision": ours["precision"],
        "optimizer": ours["optimizer"],
        "params": ours["params"],
        "tokens_per_s": med["lmforge"],
        "ms_per_step": 1000 * shape["batch"] * shape["block"] / med["lmforge"],
        # lmforge's recipe with the contenders' optimizer (AdamW): separates the optimizer's cost
        "lmforge_adamw_tokens_per_s": med["lmforge_adamw"],
        "eager_fp32_tokens_per_s": med.get("eager"),
        "eager_precision": results["eager"][0]["precision"] if "eager" in results else None,
        "eager_params": results["eager"][0]["params"] if "eager" in results else None,
        "hf_tokens_per_s": med.get("hf"),
        "hf_precision": results["hf"][0]["precision"] if "hf" in results else None,
        "hf_params": results["hf"][0]["params"] if "hf" in results else None,
        "speedup_vs_eager": med["lmforge"] / med["eager"] if "eager" in med else None,
        "speedup_vs_hf": med["lmforge"] / med["hf"] if "hf" in med else None,
        "adamw_speedup_vs_eager": med["lmforge_adamw"] / med["eager"] if "eager" in med else None,
        # Without bf16 matrix units the bf16 "peak" is an emulation far below fp32's, and a
        # utilisation against it is meaningless (it exceeds 1): null, with bf16_native false.
        "mfu_bf16": flops_tok * med["lmforge"] / peak_bf16 if peak_bf16 > peak_fp32 else None,
        "bf16_native": peak_bf16 > peak_fp32,
        "mfu_fp32": flops_tok * med["lmforge"] / peak_fp32,
        "matmul_peak_bf16_gflops": peak_bf16 / 1e9,
        "matmul_peak_fp32_gflops": peak_fp32 / 1e9,
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results["lmforge"]),
        "eager_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results["eager"])
        if "eager" in results
        else None,
        "trials": args.trials,
        **machine_fields(),
    }
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
    if not math.isfinite(row["tokens_per_s"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
