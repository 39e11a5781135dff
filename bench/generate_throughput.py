"""Decoding speed: lmforge's KV-cache generate() vs no cache vs Hugging Face generate().

Same random weights for all three (copied into the HF model). Decoding at batch 1 is bound by
memory bandwidth, so we also report weight bytes read per second as a fraction of a copy
bandwidth measured in the same run. Run by hand:

    .venv/bin/python bench/generate_throughput.py --preset gpt2 --batch 1 --json
"""

import argparse
import json
import os
import statistics
import time

import torch

from lmforge.generation.generate import generate
from lmforge.presets import build_task, get_preset


def _copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write counted)."""
    src = torch.empty(64 * 2**20 // 4)  # 64 MiB of fp32
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0:
        dst.copy_(src)
        reps += 1
    return 2 * src.numel() * 4 * reps / (time.perf_counter() - t)


def _hf_from_ours(model, cfg):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["max_seq_len"], n_embd=cfg["embed_dim"],
        n_layer=cfg["num_layers"], n_head=cfg["num_heads"], n_inner=cfg["ffn_dim"],
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    from lmforge.interop.hf import to_hf_state_dict

    hf.load_state_dict(to_hf_state_dict(model, "gpt2"), strict=False)
    return hf.eval()


def _time(fn, trials: int) -> float:
    times = []
    for _ in range(trials):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-cache-tokens", type=int, default=None,
                    help="new tokens for the (slow) no-cache run (default: new-tokens // 4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    cfg = dict(get_preset(args.preset)["config"])
    model = build_task("gpt", cfg).eval()
    B, N = args.batch, args.new_tokens
    prompt = torch.randint(0, cfg["vocab_size"], (B, args.prompt_len))

    def ours(n=N):
        for _ in generate(model, prompt, max_new_tokens=n, temperature=0):
            pass

    @torch.inference_mode()
    def no_cache(n):
        ids = prompt
        for _ in range(n):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)

    ours(4)  # warm-up
    t_ours = _time(ours, args.trials)
    n_nc = args.no_cache_tokens or max(4, N // 4)
    t_nc = _time(lambda: no_cache(n_nc), max(1, args.trials - 1))
    hf_tps = None
    try:
        hf = _hf_from_ours(model, cfg)
        with torch.inference_mode():
            def run_hf():
                hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=N,
                            min_new_tokens=N, do_sample=False, pad_token_id=0)
            run_hf()
            hf_tps = B * N / _time(run_hf, args.trials)
    except ImportError:
        pass
    tps = B * N / t_ours
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = _copy_bandwidth()
    row = {
        "preset": args.preset, "batch": B, "new_tokens": N, "prompt_len": args.prompt_len,
        "tokens_per_s": tps,
        "no_cache_tokens_per_s": B * n_nc / t_nc,
        "hf_tokens_per_s": hf_tps,
        "speedup_vs_no_cache": tps / (B * n_nc / t_nc),
        "speedup_vs_hf": tps / hf_tps if hf_tps else None,
        # each decoding step reads every weight once, whatever the batch
        "bandwidth_fraction": weight_bytes * (tps / B) / bw,
        "copy_bandwidth_gb_s": bw / 1e9,
    }
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
