"""Training and inference samples/s of lmforge's BertTextClassifier beside transformers'
BertForSequenceClassification at the all-MiniLM-L6-v2 shape (6 x 384, 12 heads, FFN 1536),
batch 16 x 128 tokens, same weights, same run, alternating so both see the same machine load.

Each model runs in its best precision on this device (bf16 autocast where bf16 matrix units
exist, else fp32). Timings are the median over rounds of `--steps` steps each. Before timing,
both models' eval logits are compared (they must agree to 1e-4): the two time the same model.

    python bench/classifier_throughput.py --json
    python bench/classifier_throughput.py --quick   # seconds: 1 layer, batch 4 x 32, a smoke run

--quick only shows that the script runs: at that size the optimizer step over the 30522 x 384
embedding dominates both models, and one short round is at the mercy of machine load.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from _timing import machine_fields, use_all_cpus


def build_models(layers: int, seed: int = 0):
    """(ours, theirs) with identical random weights at the MiniLM shape."""
    from transformers import BertConfig as HFConfig
    from transformers import BertForSequenceClassification

    from lmforge.interop.hf import from_hf_state_dict
    from lmforge.models.bert import BertConfig, BertTextClassifier

    torch.manual_seed(seed)
    hf_config = HFConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        num_labels=2,
        attn_implementation="sdpa",
    )
    theirs = BertForSequenceClassification(hf_config)
    config = BertConfig(
        vocab_size=30522,
        max_seq_len=512,
        embed_dim=384,
        num_heads=12,
        num_layers=layers,
        ffn_dim=1536,
        dropout=0.1,
    )
    ours = BertTextClassifier(config, num_classes=2)
    state = from_hf_state_dict(
        theirs.state_dict(), config, "bert", architecture="BertForSequenceClassification"
    )
    ours.load_state_dict(state)  # strict: every weight of theirs has a place in ours
    return ours, theirs


def max_logit_diff(ours, theirs, token_ids, mask) -> float:
    """Largest |ours - theirs| of the eval-mode fp32 logits: both must compute the same model."""
    ours.eval()
    theirs.eval()
    with torch.inference_mode():
        diff = (
            ours(token_ids, mask) - theirs(input_ids=token_ids, attention_mask=mask.long()).logits
        )
    return float(diff.abs().max())


def precisions() -> list[str]:
    from lmforge.device import cpu_has_bf16_matmul

    return ["fp32", "bf16"] if cpu_has_bf16_matmul() else ["fp32"]


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 layer, batch 4 x 32, 1 step, 1 round"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.batch_size, args.seq_len, args.steps, args.rounds = 1, 4, 32, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        use_all_cpus()
    ours, theirs = build_models(args.layers)
    B, T = args.batch_size, args.seq_len
    token_ids = torch.randint(1000, 30000, (B, T))
    labels = torch.randint(0, 2, (B,))
    mask = torch.ones(B, T, dtype=torch.bool)
    diff = max_logit_diff(ours, theirs, token_ids, mask)
    if diff > 1e-4:
        raise SystemExit(f"the two models disagree (max logit difference {diff:.2e}): not timed")

    def infer_ours(p):
        with torch.inference_mode(), autocast(p):
            ours(token_ids, mask)

    def infer_theirs(p):
        with torch.inference_mode(), autocast(p):
            theirs(input_ids=token_ids, attention_mask=mask.long())

    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def train_ours(p):
        with autocast(p):
            loss = F.cross_entropy(ours(token_ids, mask).float(), labels)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def train_theirs(p):
        with autocast(p):
            loss = theirs(input_ids=token_ids, attention_mask=mask.long(), labels=labels).loss
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    results = {}
    for mode, fns, train_mode in (
        ("infer", (infer_ours, infer_theirs), False),
        ("train", (train_ours, train_theirs), True),
    ):
        ours.train(train_mode)
        theirs.train(train_mode)
        best = {}
        for p in precisions():
            for fn in fns:
                fn(p)  # warm-up
            times = {fn: [] for fn in fns}
            for _ in range(args.rounds):  # alternate, so load changes hit both alike
                for fn in fns:
                    times[fn].append(timed(lambda fn=fn, p=p: fn(p), args.steps))
            for name, fn in zip(("lmforge", "transformers"), fns):
                rate = B * args.steps / statistics.median(times[fn])
                if rate > best.get(name, (0, ""))[0]:
                    best[name] = (rate, p)
        results[mode] = best
    out = {
        "shape": f"batch {B} x {T} tokens, {args.layers} x 384 MiniLM",
        "hf_attention": theirs.config._attn_implementation,
        "max_logit_diff": diff,
        "train_samples_per_s": {k: round(v[0], 3) for k, v in results["train"].items()},
        "infer_samples_per_s": {k: round(v[0], 3) for k, v in results["infer"].items()},
        "precision": {k: v[1] for k, v in results["train"].items()},
        "train_speedup_vs_hf": round(
            results["train"]["lmforge"][0] / results["train"]["transformers"][0], 3
        ),
        "infer_speedup_vs_hf": round(
            results["infer"]["lmforge"][0] / results["infer"]["transformers"][0], 3
        ),
        **machine_fields(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
