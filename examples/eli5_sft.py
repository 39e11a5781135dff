"""Instruction tuning at a small scale: pretrain a small GPT-2-shaped model on plain English
(10,000 IMDB reviews, byte-level BPE), then fine-tune it with `--task sft` on ELI5
question -> answer pairs, so that it answers a question put to it in the chat template. Reports
the held-out answer perplexity (the loss on the answer tokens only) before and after, and a few
greedy answers.

No weights can be downloaded here, so the "pretrained" model is one we make; with a real base the
second step is the same call with init_from= that base. The ELI5 records are split once, by
record (--val-fraction 0.1): the held-out ones are never trained on. Runs offline:

    .venv/bin/python examples/eli5_sft.py --out runs/eli5-sft
    .venv/bin/python examples/eli5_sft.py --quick --out /tmp/eli5-sft  # seconds; a smoke run
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import lmforge
from lmforge import progress

# GPT-2's switches from the gpt2 preset (pre-norm, tanh GELU, learned positions, tied
# embeddings); a small size with a 256-token context, which holds most ELI5 question + answer.
SMALL = dict(preset="gpt2", num_layers=4, embed_dim=128, num_heads=4, ffn_dim=512, max_seq_len=256)
QUICK = dict(preset="gpt2", num_layers=1, embed_dim=32, num_heads=2, ffn_dim=64, max_seq_len=128)
# Questions of our own in ELI5's style (the data's own text stays out of the report).
QUESTIONS = [
    "Why is the sky blue?",
    "How do vaccines teach the body to fight a disease?",
    "Why do we need to sleep?",
]
SFT = dict(
    task="sft",
    field="prompt=question,completion=answer",
    val_fraction=0.1,
    pack=True,  # short answers share rows; attention stays inside each one
    weight_decay=0.01,
    warmup_steps=20,
    batch_size=8,
    dropout=0.1,
)


def english_reviews(out: Path, num_reviews: int) -> Path:
    """The first `num_reviews` IMDB training reviews as JSONL ({"text": ...}): plain modern
    English to pretrain on, with a small held-out share (the dataset's own 25,000-review test
    split would make the final evaluation longer than the pretraining)."""
    from lmforge.data.corpus import open_source

    path = out / "imdb-reviews.jsonl"
    if not path.is_file():
        docs = open_source("imdb", field="review").iter_documents()
        texts = (d.text for d in docs if d.split == "train")
        lines = [json.dumps({"text": t}) for t in itertools.islice(texts, num_reviews)]
        out.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return path


def held_out_answers(run: Path):
    """The held-out ELI5 examples of an SFT run (padded, one per row), as the run scored them."""
    from lmforge.training.config import TrainConfig
    from lmforge.training.run_data import load_sft_data, make_sft_examples

    saved = json.loads((run / "config.json").read_text())
    data = load_sft_data(TrainConfig(**saved["train"]))
    return data, make_sft_examples(data, "val", saved["data"]["block_size"], pack=False)


def answer_perplexity(model_or_run, examples) -> float:
    """Perplexity of the answer tokens alone (the prompt tokens carry no loss)."""
    from lmforge.training.trainer import evaluate

    model = lmforge.load(model_or_run) if isinstance(model_or_run, (str, Path)) else model_or_run
    return evaluate(model, examples, batch_size=16)["perplexity"]


def sample_answers(run: Path, data, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers of the fine-tuned run to questions put in its chat template."""
    messages = [[{"role": "user", "content": q}] for q in questions]
    prompts = [data.template.render(m, add_generation_prompt=True) for m in messages]
    return [
        lmforge.generate_text(
            str(run),
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            no_repeat_ngram_size=3,
            stop=data.template.stop,
        ).strip()
        for prompt in prompts
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=f"runs/eli5-sft-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument(
        "--pretrain-steps",
        type=int,
        default=1000,
        help="pretraining steps of 8 x 256 tokens of IMDB reviews (1000)",
    )
    ap.add_argument("--epochs", type=float, default=3, help="fine-tuning passes over ELI5 (3)")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak lr (1e-3)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in seconds: a 1 x 32 model pretrained 10 steps on tinyshakespeare, "
        "fine-tuned 10 steps",
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--docs", default=None, help="also write the report to this JSON file")
    args = ap.parse_args()
    out = Path(args.out)
    progress.enable(True)
    timings = {}

    t = time.perf_counter()
    pretrained = out / "pretrained"
    if args.quick:
        corpus = dict(data="tinyshakespeare", vocab_size=512, max_steps=10, **QUICK)
    else:
        reviews = english_reviews(out, num_reviews=10_000)
        corpus = dict(data=str(reviews), field="text", val_fraction=0.02, vocab_size=4096)
        corpus.update(SMALL, max_steps=args.pretrain_steps)
    print(f"1. pretraining a small GPT ({corpus['max_steps']} steps) ...")
    pre = lmforge.train(
        **corpus,
        tokenizer="bpe",
        lr=1e-3,
        batch_size=8,
        warmup_steps=min(100, corpus["max_steps"] // 10),
        batching="windows",
        eval_every=10_000,
        eval_tokens=50_000,
        threads=args.threads,
        out=str(pretrained),
    )
    timings["pretrain_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tuned = out / "sft"
    budget = dict(max_steps=10, eval_every=5) if args.quick else dict(epochs=args.epochs)
    print(f"2. fine-tuning it on ELI5 questions -> answers ({budget}) ...")
    result = lmforge.train(
        init_from=str(pretrained),
        data="eli5",  # eli5-alce-1000.json in LMFORGE_DATA_DIR: question, answer, claims
        **SFT,
        **budget,
        block_size=corpus["max_seq_len"],
        lr=args.lr,
        threads=args.threads,
        out=str(tuned),
    )
    timings["sft_s"] = time.perf_counter() - t

    data, examples = held_out_answers(tuned)
    if set(data.val.numbers) & set(data.train.numbers):
        raise SystemExit("a held-out ELI5 record is also a training record")
    report = {
        "pretrain_data": "tinyshakespeare" if args.quick else "IMDB reviews (10,000)",
        "pretrain_steps": pre["steps"],
        "pretrain_val_perplexity": pre["val_perplexity"],
        "eli5_train_records": len(data.train),
        "eli5_held_out_records": len(data.val),
        "held_out_answer_tokens": int(sum(t[1:].sum() for t in data.val.targets)),
        # the same examples and the same function score both, so the numbers compare
        "answer_perplexity_before": answer_perplexity(pretrained, examples),
        "answer_perplexity_after": answer_perplexity(tuned, examples),
        "sft_val_perplexity": result["val_perplexity"],
        "sft_budget": budget,
        "sft_lr": args.lr,
        "sft_steps": result["steps"],
        "sft_tokens_per_s": result["tokens_per_s"],
    }
    answers = sample_answers(tuned, data, QUESTIONS, 40 if args.quick else 80)
    report["samples"] = [{"question": q, "answer": a} for q, a in zip(QUESTIONS, answers)]
    report.update({k: round(v, 1) for k, v in timings.items()})
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    print(text, end="")
    (out / "report.json").write_text(text)
    if args.docs:
        Path(args.docs).write_text(text)


if __name__ == "__main__":
    main()
