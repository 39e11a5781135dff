"""Decoding speed: lmforge's KV-cache generate() vs no cache vs Hugging Face generate(); then
beam search (4 beams) and a batch of prompts of mixed lengths, beside transformers.

Same random weights for all (copied into the HF model, and checked by comparing logits), same
prompts, same number of new tokens for every contender, the no-cache loop included (transformers
is kept from stopping early with min_new_tokens). Decoding at batch 1 is bound by memory
bandwidth, so we also report weight bytes read per second as a fraction of a copy bandwidth
measured in the same run. The int8 rows decode a copy with int8 weights (`quantize_`: every linear
layer and the output head) against Hugging Face's faster precision at batch 1 (fp32 or bf16).
Every contender runs once untimed first; contenders of a comparison
then alternate within each trial; medians are reported (this machine's speed drifts). Run by hand:

    .venv/bin/python bench/generate_throughput.py --preset gpt2 --batch 1 --json
    .venv/bin/python bench/generate_throughput.py --tiny --json   # a seconds-long smoke run
"""

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn as nn
from _timing import machine_fields, use_all_cpus

from lmforge.generation.generate import generate
from lmforge.layers.quant import Int8Linear, quantize_
from lmforge.presets import build_task, get_preset

# --tiny: the gpt2 preset's switches at a size that runs in seconds (a smoke run, not a number)
TINY = dict(vocab_size=1000, max_seq_len=128, embed_dim=64, num_heads=2, num_layers=2, ffn_dim=256)


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
    """transformers' model of the layout our model exports as (GPT2LMHeadModel for gpt2,
    LlamaForCausalLM for smollm2-135m), with our weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmforge.interop.hf import export_type, hf_config_from, to_hf_state_dict

    model_type = export_type(model)
    config = hf_config_from(model.config, model_type, model=model)
    config.pop("model_type")
    # the end-of-text is the last id; min_new_tokens masks it, so it must exist
    config.update(bos_token_id=cfg["vocab_size"] - 1, eos_token_id=cfg["vocab_size"] - 1)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    hf.load_state_dict(to_hf_state_dict(model, model_type), strict=False)  # tied head: re-tied
    hf.eval()
    ids = torch.randint(0, cfg["vocab_size"], (1, 16))
    with torch.inference_mode():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"the transformers copy differs from our model (logits off by {diff})")
    return hf


def _int8_model(model):
    """An int8 copy of `model` (the kernel that runs), checked against the fp32 logits."""
    int8 = copy.deepcopy(model)
    kernel = quantize_(int8, "int8")
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.inference_mode():
        want, got = model(ids), int8(ids)
    if (got - want).abs().max() > 0.05 * want.abs().max():
        raise RuntimeError("the int8 copy's logits are far from the fp32 model's")
    return int8, kernel


def _step_bytes(model) -> int:
    """Bytes one decoding step reads: every parameter and int8 weight, scale and bias, less the
    embedding tables (a lookup reads one row; a tied head is counted as its own int8 copy)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            continue
        tensors = [*m.parameters(recurse=False)]
        if isinstance(m, Int8Linear):
            tensors += [m.weight, m.scale]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _alternate(fns: dict, trials: int) -> dict:
    """Median seconds of each function, run round-robin A B A B ... after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def _beams_and_mixed(model, hf, cfg, args) -> dict:
    """Beam search (4 beams) and mixed-length batches: tokens/s of ours and of transformers."""
    from lmforge.generation.beam import beam_search

    V, N = cfg["vocab_size"], args.new_tokens
    prompt = torch.randint(0, V, (args.prompt_len,)).tolist()
    lengths = [max(1, args.prompt_len * k // 4) for k in (1, 2, 3, 4)] * max(1, args.batch // 4)
    prompts = [torch.randint(0, V, (n,)).tolist() for n in lengths]
    width = max(lengths)
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def ours_beams():
        beam_search(model, prompt, N, num_beams=args.beams, num_return=1)

    def ours_mixed(left_pad=True):
        for _ in generate(model, prompts, N, temperature=0, left_pad=left_pad):
            pass

    fns = {"beams": ours_beams, "mixed": ours_mixed, "mixed_ragged": lambda: ours_mixed(False)}
    if hf is not None:
        ids = torch.tensor([prompt])

        @torch.inference_mode()
        def hf_beams():
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=N,
                min_new_tokens=N,
                num_beams=args.beams,
                do_sample=False,
                early_stopping=False,
                pad_token_id=0,
            )

        @torch.inference_mode()
        def hf_mixed():
            hf.generate(
                padded,
                attention_mask=mask,
                max_new_tokens=N,
                min_new_tokens=N,
                do_sample=False,
                pad_token_id=0,
            )

        fns.update(hf_beams=hf_beams, hf_mixed=hf_mixed)
    t = _alternate(fns, args.trials)
    row = {
        "beams": args.beams,
        "beam_tokens_per_s": N / t["beams"],  # new tokens of the returned sequence per second
        "mixed_prompt_lens": sorted(set(lengths)),
        "mixed_batch": len(prompts),
        "mixed_tokens_per_s": len(prompts) * N / t["mixed"],
        "mixed_ragged_tokens_per_s": len(prompts) * N / t["mixed_ragged"],
    }
    if hf is not None:
        row.update(
            hf_beam_tokens_per_s=N / t["hf_beams"],
            beam_speedup_vs_hf=t["hf_beams"] / t["beams"],
            hf_mixed_tokens_per_s=len(prompts) * N / t["hf_mixed"],
            mixed_speedup_vs_hf=t["hf_mixed"] / t["mixed"],
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--beams", type=int, default=4, help="beam width of the beam-search rows")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run: a 2 x 64 model, 8 new tokens, 1 trial (checks the script; no numbers)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    use_all_cpus()
    torch.manual_seed(0)
    cfg = dict(get_preset(args.preset)["config"])
    if args.tiny:
        cfg.update(TINY)
        args.new_tokens, args.prompt_len, args.trials = 8, 8, 1
    model = build_task(get_preset(args.preset)["family"], cfg).eval()
    B, N = args.batch, args.new_tokens
    prompt = torch.randint(0, cfg["vocab_size"], (B, args.prompt_len))

    def ours(n=N, model=model):  # model: or its int8 copy
        for _ in generate(model, prompt, max_new_tokens=n, temperature=0):
            pass

    @torch.inference_mode()
    def no_cache():  # the same N tokens as ours, each by a full forward over the sequence so far
        ids = prompt
        for _ in range(N):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)

    int8, int8_kernel = _int8_model(model)

    try:
        hf = _hf_from_ours(model, cfg)
    except ImportError:
        hf = None

    @torch.inference_mode()
    def run_hf(m=None):  # m: another copy of the HF model (bf16)
        (m or hf).generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=N,
            min_new_tokens=N,
            do_sample=False,
            pad_token_id=0,
        )

    fns = {"ours": ours, "int8": lambda: ours(model=int8), "no_cache": no_cache}
    if hf is not None:
        hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
        fns.update(hf=run_hf, hf_bf16=lambda: run_hf(hf_bf16))
    t = _alternate(fns, args.trials)
    t_ours = t["ours"]
    hf_tps = B * N / t["hf"] if hf is not None else None
    hf_best = B * N / min(t["hf"], t["hf_bf16"]) if hf is not None else None
    int8_tps = B * N / t["int8"]
    tps = B * N / t_ours
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = _copy_bandwidth()
    row = {
        "preset": args.preset + (" (tiny)" if args.tiny else ""),
        "batch": B,
        "new_tokens": N,
        "prompt_len": args.prompt_len,
        "tokens_per_s": tps,
        "no_cache_tokens_per_s": B * N / t["no_cache"],
        "hf_tokens_per_s": hf_tps,
        "speedup_vs_no_cache": t["no_cache"] / t_ours,
        "speedup_vs_hf": tps / hf_tps if hf_tps else None,
        # each decoding step reads every weight once, whatever the batch
        "bandwidth_fraction": weight_bytes * (tps / B) / bw,
        "copy_bandwidth_gb_s": bw / 1e9,
        "int8_tokens_per_s": int8_tps,
        "hf_bf16_tokens_per_s": B * N / t["hf_bf16"] if hf is not None else None,
        # against transformers' faster precision here (fp32 or bf16)
        "int8_speedup_vs_hf": int8_tps / hf_best if hf_best else None,
        "int8_bandwidth_fraction": _step_bytes(int8) * (int8_tps / B) / bw,
        "int8_weight_mb": _step_bytes(int8) / 1e6,
        "int8_kernel": int8_kernel,
        "precision": "fp32",  # ours, no cache and HF; hf_bf16 bf16 weights; int8: int8_kernel
        **_beams_and_mixed(model, hf, cfg, args),
        **machine_fields(),
    }
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
