"""Decoding speed at the GPT-2 small shape (random weights, prompt 32, 128 new tokens, greedy):
lmforge's engine against no cache, Hugging Face generate() and CTranslate2, in float32 and int8;
one stream and 8 streams at once; beam search and mixed-length batches; gpt-baby's engine
overhead against a plain loop without a cache.

Every contender runs in its own fresh process (one untimed short run, then one timed run), the
contenders alternated within each trial, with the same weights (seed 0; copied into the HF model,
converted for CTranslate2, both checked against ours first), the same prompts, the same number of
new tokens (HF with min_new_tokens, CTranslate2 with min_length) and the same thread count.
Medians over trials are reported. Decoding one stream is bound by memory bandwidth, so weight
bytes read per second are also given as a fraction of a copy bandwidth measured in the same run.
Run by hand:

    .venv/bin/python bench/generate_throughput.py --preset gpt2 --batch 1 --json
    .venv/bin/python bench/generate_throughput.py --tiny --json   # a seconds-long smoke run
"""

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from _timing import machine_fields

from lmforge.generation.engine import Engine, SamplingParams
from lmforge.generation.generate import generate
from lmforge.layers.quant import Int8Linear, quantize_
from lmforge.presets import build_task, get_preset

# --tiny: the gpt2 preset's switches at a size that runs in seconds (a smoke run, not a number)
TINY = dict(vocab_size=1000, max_seq_len=128, embed_dim=64, num_heads=2, num_layers=2, ffn_dim=256)
STREAMS = 8  # streams submitted at once; their prompts have 8 different lengths around prompt_len
BABY_TOKENS = 500  # gpt-baby's output length (--tiny: 50)


# ---------------------------------------------------------------- models and inputs


def _config(args) -> dict:
    cfg = dict(get_preset(args.preset)["config"])
    grouped = {"num_kv_heads": 1} if "num_kv_heads" in cfg else {}  # a llama preset's heads
    return cfg | TINY | grouped if args.tiny else cfg


def _model(cfg: dict, family: str = "gpt"):
    torch.manual_seed(0)  # every process builds the same weights
    return build_task(family, cfg).eval()


def _prompts(cfg: dict, lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def _stream_lengths(prompt_len: int) -> list[int]:
    """8 different prompt lengths, prompt_len / 4 apart, averaging about prompt_len."""
    step = max(1, prompt_len // 4)
    return [max(1, prompt_len + step * (i - STREAMS // 2)) for i in range(STREAMS)]


def _hf_from_ours(model, cfg, check: bool = True):
    """transformers' model of the layout ours exports as (GPT2LMHeadModel for gpt2,
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
    if check:
        ids = torch.randint(0, cfg["vocab_size"], (1, 16))
        with torch.inference_mode():
            diff = (model(ids) - hf(ids).logits).abs().max().item()
        if diff > 1e-3:
            raise RuntimeError(
                f"the transformers copy differs from our model (logits off by {diff})"
            )
    return hf


def _int8_model(model, check: bool = True):
    """An int8 copy of `model` and the kernel that runs, checked against the fp32 logits."""
    int8 = copy.deepcopy(model)
    kernel = quantize_(int8, "int8")
    if check:
        ids = torch.randint(0, model.config.vocab_size, (1, 16))
        with torch.inference_mode():
            want, got = model(ids), int8(ids)
        if (got - want).abs().max() > 0.05 * want.abs().max():
            raise RuntimeError("the int8 copy's logits are far from the fp32 model's")
    return int8, kernel


def _ct2_tokens(ids: list[int], vocab: int) -> list[str]:
    return [_ct2_name(i, vocab) for i in ids]


def _ct2_name(i: int, vocab: int) -> str:
    return "<|endoftext|>" if i == vocab - 1 else f"t{i}"  # the placeholder vocabulary's names


def _convert_ct2(model, cfg, folder: Path) -> Path:
    """The model as a CTranslate2 folder (float32; int8 is chosen when it is loaded), through
    its Transformers converter: a HF folder with a placeholder vocab.json and merges.txt."""
    import ctranslate2

    hf_dir = folder / "hf"
    _hf_from_ours(model, cfg, check=False).save_pretrained(hf_dir)
    V = cfg["vocab_size"]
    (hf_dir / "vocab.json").write_text(json.dumps({_ct2_name(i, V): i for i in range(V)}))
    (hf_dir / "merges.txt").write_text("#version: 0.2\n")
    if model.family == "llama":  # its converter reads a fast tokenizer: the same names
        from tokenizers import Tokenizer, models

        names = {_ct2_name(i, V): i for i in range(V)}
        Tokenizer(models.WordLevel(names, unk_token="t0")).save(str(hf_dir / "tokenizer.json"))
        end = _ct2_name(V - 1, V)  # its config wants bos, eos and unk named
        settings = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": end}
        settings.update(bos_token=end, unk_token="t0")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(settings))
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(folder / "ct2"))
    return folder / "ct2"


def _check_ct2(model, cfg, ct2_dir: Path, threads: int) -> None:
    """CTranslate2's float32 greedy tokens are ours, and it makes exactly as many as asked."""
    import ctranslate2

    prompt = _prompts(cfg, [8], seed=3)[0]
    gen = ctranslate2.Generator(str(ct2_dir), device="cpu", intra_threads=threads)
    res = gen.generate_batch(
        [_ct2_tokens(prompt, cfg["vocab_size"])],
        max_length=6,
        min_length=6,
        sampling_topk=1,
        include_prompt_in_result=False,
    )
    ours = [int(t[0]) for t in generate(model, prompt, 6, temperature=0)]
    if res[0].sequences_ids[0] != ours:
        raise RuntimeError(f"CTranslate2's greedy tokens {res[0].sequences_ids[0]} are not {ours}")


def _copy_bandwidth(nbytes: int) -> float:
    """Bytes/s of a tensor copy as large as the weights (read + write counted): a copy that fits
    the cache (this Xeon reports a 300 MiB L3) would measure the cache, not the memory that
    decoding reads its weights from."""
    src = torch.empty(max(nbytes, 2**20) // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0 or reps < 3:
        dst.copy_(src)
        reps += 1
    return 2 * src.numel() * 4 * reps / (time.perf_counter() - t)


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


# ---------------------------------------------------------------- contenders (one per process)


def _engine_streams(model, prompts, n, threads) -> tuple[float, list[float]]:
    """All prompts submitted at once to one engine: seconds, and every gap between two tokens
    of one stream."""
    engine = Engine(model, slots=len(prompts), threads=threads)
    handles = [engine.submit(p, SamplingParams(n, temperature=0)) for p in prompts]
    seen = [0] * len(handles)
    last: list[float | None] = [None] * len(handles)
    gaps = []
    start = time.perf_counter()
    while engine.has_work:
        engine.step()
        now = time.perf_counter()
        for i, h in enumerate(handles):
            if len(h.tokens) > seen[i]:
                if last[i] is not None:
                    gaps.append(now - last[i])
                seen[i], last[i] = len(h.tokens), now
    return time.perf_counter() - start, gaps


def _ct2_run(args, cfg, prompts, n, compute_type):
    import ctranslate2

    gen = ctranslate2.Generator(
        args.ct2_dir, device="cpu", compute_type=compute_type, intra_threads=args.threads
    )
    batch = [_ct2_tokens(p, cfg["vocab_size"]) for p in prompts]

    def run(n=n):
        gen.generate_batch(
            batch,
            max_length=n,
            min_length=n,  # no early end: exactly n new tokens per prompt
            sampling_topk=1,
            include_prompt_in_result=False,
            max_batch_size=len(batch),
        )

    return run


def _contender(name: str, args) -> dict:
    """Build what `name` needs, run it once briefly untimed, then once timed."""
    torch.set_num_threads(args.threads)
    cfg = _config(args)
    B, N, T = args.batch, args.new_tokens, args.threads
    warm = min(N, 8)
    prompt = _prompts(cfg, [args.prompt_len] * B, seed=1)
    streams = _prompts(cfg, _stream_lengths(args.prompt_len), seed=2)
    out: dict = {}
    if name.startswith("baby"):
        baby = dict(get_preset("gpt-baby")["config"])
        n = 50 if args.tiny else BABY_TOKENS
        baby["max_seq_len"] = args.prompt_len + n  # the whole output in the cache (see README)
        model = _model(baby)
        ids = _prompts(baby, [args.prompt_len], seed=1)

        @torch.inference_mode()
        def naive(n=n):  # the whole sequence through the model at every step, no cache
            seq = torch.tensor(ids)
            for _ in range(n):
                seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)

        def engine(n=n):
            for _ in generate(model, ids, n, temperature=0, threads=T):
                pass

        run = naive if name == "baby_naive" else engine
        if name == "baby_engine":  # the model's bare decode step at the middle of the output
            state = model.init_slots(1, baby["max_seq_len"])
            one = torch.tensor([[1]])
            with torch.inference_mode():
                model.step_slots(torch.tensor(ids), state, [0], [0])
                t = time.perf_counter()
                for i in range(n):
                    model.step_slots(one, state, [0], [args.prompt_len + i // 2])
                out["bare_forward_s"] = (time.perf_counter() - t) / n
        run(min(n, 8))
        t = time.perf_counter()
        run()
        return out | {"seconds": time.perf_counter() - t}
    model = _model(cfg, get_preset(args.preset)["family"])
    if name.startswith("int8") or name == "streams8_int8":
        model, _ = _int8_model(model, check=False)
    if name in ("ours", "int8"):
        step_times = []

        def run(n=N):
            step_times.clear()
            for _ in generate(model, prompt, n, temperature=0, threads=T):
                step_times.append(time.perf_counter())

    elif name in ("streams8", "streams8_int8", "stream1"):
        prompts = streams if name != "stream1" else prompt[:1]
        warm_prompts = [p[:4] for p in prompts]
        _engine_streams(model, warm_prompts, warm, T)
        seconds, gaps = _engine_streams(model, prompts, N, T)
        return {"seconds": seconds, "itl_p50_s": statistics.median(gaps)}
    elif name == "no_cache":

        @torch.inference_mode()
        def run(n=N):  # the same N tokens as ours, each by a full forward over the sequence so far
            ids, context = torch.tensor(prompt), cfg["max_seq_len"]
            for _ in range(n):  # past the context, its last max_seq_len tokens (as nanoGPT's)
                nxt = model(ids[:, -context:])[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)

    elif name in ("hf", "hf_bf16", "hf_beams", "hf_mixed"):
        hf = _hf_from_ours(model, cfg, check=False)
        hf = hf.to(torch.bfloat16) if name == "hf_bf16" else hf
        ids, mask, beams = torch.tensor(prompt), None, 1
        if name == "hf_beams":
            ids, beams = ids[:1], args.beams
        if name == "hf_mixed":
            ids, mask = _left_padded(streams)

        @torch.inference_mode()
        def run(n=N):
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids) if mask is None else mask,
                max_new_tokens=n,
                min_new_tokens=n,
                num_beams=beams,
                do_sample=False,
                early_stopping=False,
                pad_token_id=0,
            )

    elif name.startswith("ct2"):
        compute = "int8" if "int8" in name else "float32"
        run = _ct2_run(args, cfg, streams if name.endswith("b8") else prompt, N, compute)
    elif name == "beams":
        from lmforge.generation.beam import beam_search

        def run(n=N):
            beam_search(model, prompt[0], n, num_beams=args.beams, num_return=1)

    elif name in ("mixed", "mixed_ragged"):

        def run(n=N):
            for _ in generate(model, streams, n, temperature=0, left_pad=name == "mixed"):
                pass

    else:
        raise ValueError(name)
    run(warm)
    t = time.perf_counter()
    run()
    seconds = time.perf_counter() - t
    if name in ("ours", "int8") and B == 1:
        out["itl_p50_s"] = statistics.median(b - a for a, b in zip(step_times, step_times[1:]))
    return out | {"seconds": seconds}


def _left_padded(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


# ---------------------------------------------------------------- the run


def _alternate(names: list[str], args, argv: list[str]) -> dict:
    """Each contender in a fresh process per trial, round-robin; the medians of what they
    report (seconds, itl_p50_s, ...)."""
    got: dict = {name: {} for name in names}
    for _ in range(args.trials):
        for name in names:
            cmd = [sys.executable, __file__, *argv, "--contender", name, "--ct2-dir", args.ct2_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"contender {name} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: {result['seconds']:.2f} s", file=sys.stderr, flush=True)
            for key, value in result.items():
                got[name].setdefault(key, []).append(value)
    return {name: {k: statistics.median(v) for k, v in d.items()} for name, d in got.items()}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--beams", type=int, default=4, help="beam width of the beam-search rows")
    ap.add_argument("--threads", type=int, default=None, help="every contender's (default: all)")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run: a 2 x 64 model, 8 new tokens, 1 trial (checks the script; no numbers)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--contender", help=argparse.SUPPRESS)  # a worker process: run one
    ap.add_argument("--ct2-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads is None:
        from lmforge.system import usable_cpus

        args.threads = usable_cpus()
    if args.tiny:
        args.new_tokens, args.prompt_len, args.trials = 8, 8, 1
    if args.contender:
        print(json.dumps(_contender(args.contender, args)))
        return
    torch.set_num_threads(args.threads)
    argv = [a for a in sys.argv[1:] if a != "--json"] + ["--threads", str(args.threads)]
    cfg = _config(args)
    model = _model(cfg, get_preset(args.preset)["family"])
    int8, int8_kernel = _int8_model(model)  # checked here once; the workers rebuild it
    has_hf, has_ct2 = _has("transformers"), _has("ctranslate2")
    names = ["ours", "int8", "no_cache", "streams8", "streams8_int8", "beams", "mixed"]
    names += ["mixed_ragged", "baby_engine", "baby_naive"] + (
        [] if args.batch == 1 else ["stream1"]
    )
    if has_hf:
        _hf_from_ours(model, cfg)  # checked here once
        names += ["hf", "hf_bf16", "hf_beams", "hf_mixed"]
    folder = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    try:
        if has_ct2:
            args.ct2_dir = str(_convert_ct2(model, cfg, folder))
            _check_ct2(model, cfg, Path(args.ct2_dir), args.threads)
            names += ["ct2", "ct2_int8", "ct2_b8", "ct2_int8_b8"]
        t = _alternate(names, args, argv)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row = _row(args, cfg, model, int8, int8_kernel, t)
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>30}: {v:.4g}" if isinstance(v, float) else f"{k:>30}: {v}")


def _row(args, cfg, model, int8, int8_kernel, t) -> dict:
    B, N = args.batch, args.new_tokens

    def tps(name, rows=B, n=N):
        return rows * n / t[name]["seconds"] if name in t else None

    def ratio(a, b):
        return a / b if a and b else None

    tokens_per_s, int8_tps = tps("ours"), tps("int8")
    hf_best = max(filter(None, [tps("hf"), tps("hf_bf16")]), default=None)
    one = t["ours" if B == 1 else "stream1"]
    streams8, streams8_int8 = tps("streams8", STREAMS), tps("streams8_int8", STREAMS)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = _copy_bandwidth(weight_bytes)
    baby_n = 50 if args.tiny else BABY_TOKENS
    lengths = _stream_lengths(args.prompt_len)
    return {
        "preset": args.preset + (" (tiny)" if args.tiny else ""),
        "batch": B,
        "new_tokens": N,
        "prompt_len": args.prompt_len,
        "tokens_per_s": tokens_per_s,
        "no_cache_tokens_per_s": tps("no_cache"),
        "hf_tokens_per_s": tps("hf"),
        "speedup_vs_no_cache": ratio(tokens_per_s, tps("no_cache")),
        "speedup_vs_hf": ratio(tokens_per_s, tps("hf")),
        # each decoding step reads every weight once, whatever the batch
        "bandwidth_fraction": weight_bytes * (tokens_per_s / B) / bw,
        "copy_bandwidth_gb_s": bw / 1e9,
        "int8_tokens_per_s": int8_tps,
        "hf_bf16_tokens_per_s": tps("hf_bf16"),
        # against transformers' faster precision here (fp32 or bf16)
        "int8_speedup_vs_hf": ratio(int8_tps, hf_best),
        "int8_bandwidth_fraction": _step_bytes(int8) * (int8_tps / B) / bw,
        "int8_weight_mb": _step_bytes(int8) / 1e6,
        "int8_kernel": int8_kernel,
        "precision": "fp32",  # ours, no cache, HF, ct2; hf_bf16 bf16; int8 rows: int8 weights
        "dtype": "float32",
        # CTranslate2 at the same batch, float32 and int8
        "ct2_tokens_per_s": tps("ct2"),
        "ct2_int8_tokens_per_s": tps("ct2_int8"),
        "speedup_vs_ct2": ratio(tokens_per_s, tps("ct2")),
        "int8_speedup_vs_ct2_int8": ratio(int8_tps, tps("ct2_int8")),
        # 8 streams of different prompt lengths submitted at once to one engine (float32), over
        # one stream; itl: the median gap between two tokens of one stream
        "streams8_prompt_lens": lengths,
        "streams8_tokens_per_s": streams8,
        "streams8_speedup_vs_1": ratio(streams8, 1 * N / one["seconds"]),
        "streams8_itl_p50_ratio": ratio(t["streams8"]["itl_p50_s"], one.get("itl_p50_s")),
        "itl_p50_ms": one["itl_p50_s"] * 1e3 if "itl_p50_s" in one else None,
        "int8_streams8_tokens_per_s": streams8_int8,
        # CTranslate2 on the same 8 prompts in one batch; ours in the same precision
        "ct2_streams8_tokens_per_s": tps("ct2_b8", STREAMS),
        "ct2_int8_streams8_tokens_per_s": tps("ct2_int8_b8", STREAMS),
        "streams8_speedup_vs_ct2": ratio(streams8, tps("ct2_b8", STREAMS)),
        "streams8_speedup_vs_ct2_int8": ratio(streams8_int8, tps("ct2_int8_b8", STREAMS)),
        # gpt-baby (random weights, context widened to hold prompt + output), batch 1
        "baby_new_tokens": baby_n,
        "engine_ms_per_token": t["baby_engine"]["seconds"] / baby_n * 1e3,
        "bare_forward_ms": t["baby_engine"]["bare_forward_s"] * 1e3,
        "naive_ms_per_token": t["baby_naive"]["seconds"] / baby_n * 1e3,
        "speedup_vs_naive": t["baby_naive"]["seconds"] / t["baby_engine"]["seconds"],
        # beam search (one prompt) and the 8 streams' prompts as one generate() batch
        "beams": args.beams,
        "beam_tokens_per_s": tps("beams", 1),  # new tokens of the returned sequence per second
        "hf_beam_tokens_per_s": tps("hf_beams", 1),
        "beam_speedup_vs_hf": ratio(tps("beams", 1), tps("hf_beams", 1)),
        "mixed_prompt_lens": sorted(set(lengths)),
        "mixed_batch": len(lengths),
        "mixed_tokens_per_s": tps("mixed", len(lengths)),
        "mixed_ragged_tokens_per_s": tps("mixed_ragged", len(lengths)),
        "hf_mixed_tokens_per_s": tps("hf_mixed", len(lengths)),
        "mixed_speedup_vs_hf": ratio(tps("mixed", len(lengths)), tps("hf_mixed", len(lengths))),
        **machine_fields(),
    }


if __name__ == "__main__":
    main()
