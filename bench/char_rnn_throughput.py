"""Char-RNN speed: lmforge training vs the same model in plain eager fp32 PyTorch, and generation
with the carried state vs re-reading the whole prefix at every step.

Training: tokens/s of lmforge's defaults (the preset's model, make_optimizer, train_step, and the
precision `auto` picks: bf16 on GPUs and AMX CPUs, fp32 elsewhere) beside nn.Embedding + nn.LSTM
+ nn.Linear with torch.optim.Adam in fp32. Generation, batch 1, same sampling: generate() feeding
one character per step beside re-running the model over the whole prefix for every character.
Re-reading all 1000 prefixes costs minutes per round on a CPU, and a step's cost depends only on
its prefix length, so by default the re-reading contender times --recompute-points steps at
evenly spaced lengths (the midpoints of equal slices of the 1000) and its 1000-character time is
their mean x 1000; --recompute-chars N times the first N steps exactly instead (then the
speedup is a lower bound unless N = --chars). Contenders alternate in every round (A B, B A,
...); medians over rounds. Run by hand:

    .venv/bin/python bench/char_rnn_throughput.py --json                   # the tutorial's size
    .venv/bin/python bench/char_rnn_throughput.py --hidden-dim 256 --json  # a quicker look
    .venv/bin/python bench/char_rnn_throughput.py --quick --json           # smoke run, seconds
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from _timing import machine_fields

from lmforge import device as devices
from lmforge.generation.generate import generate
from lmforge.generation.sampling import sample_next_token
from lmforge.presets import build_task, get_preset
from lmforge.training.trainer import TrainConfig, make_optimizer, train_step


class PlainCharRNN(nn.Module):
    """What one writes by hand in PyTorch: the same layers, PyTorch's default init, fp32."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, cell: str, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(embed_dim, hidden_dim, layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def forward(self, token_ids):
        return self.head(self.rnn(self.embed(token_ids))[0])


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _alternate(contenders: dict, rounds: int, dev: torch.device) -> dict[str, float]:
    """Median seconds per call of each contender, alternating their order in every round."""
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            _sync(dev)
            t = time.perf_counter()
            contenders[name]()
            _sync(dev)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="char-rnn-lstm-shakespeare")
    ap.add_argument("--hidden-dim", type=int, default=None, help="default: the preset's (1024)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=100)
    ap.add_argument("--steps", type=int, default=2, help="training steps per contender and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chars", type=int, default=1000, help="characters to generate")
    ap.add_argument(
        "--recompute-points",
        type=int,
        default=20,
        help="re-reading steps timed at evenly spaced prefix lengths (default 20)",
    )
    ap.add_argument(
        "--recompute-chars",
        type=int,
        default=None,
        help="instead: time the first N re-reading steps exactly",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: hidden 128, batch 8, 3 steps x 3 rounds, 100 chars, 5 points",
    )
    args = ap.parse_args()
    if args.quick:
        args.hidden_dim, args.batch_size, args.steps, args.rounds = 128, 8, 3, 3
        args.chars, args.recompute_points = 100, 5

    dev = devices.pick_device(args.device)
    threads = devices.set_threads(args.threads) if dev.type == "cpu" else None
    preset = get_preset(args.preset)
    cfg = dict(preset["config"])
    if args.hidden_dim:
        cfg["hidden_dim"] = args.hidden_dim
    precision = devices.resolve_precision("auto", dev)
    torch.manual_seed(0)
    B, T, V = args.batch_size, args.block_size, cfg["vocab_size"]
    window = torch.randint(0, V, (B, T + 1), device=dev)
    batch = {"token_ids": window[:, :-1], "labels": window[:, 1:]}

    # ---- training: lmforge's defaults vs plain eager fp32
    task = build_task("char_rnn", cfg).to(dev).train()
    optimizer = make_optimizer(task, TrainConfig(**{**preset["train"], "preset": args.preset}))
    plain = PlainCharRNN(V, cfg["embed_dim"], cfg["hidden_dim"], cfg["cell"], cfg["num_layers"])
    plain = plain.to(dev)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def lmforge_steps():
        for _ in range(args.steps):
            train_step(task, batch, optimizer, precision=precision)

    def eager_steps():
        for _ in range(args.steps):
            logits = plain(batch["token_ids"])
            loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
            loss.backward()
            plain_opt.step()
            plain_opt.zero_grad(set_to_none=True)
            loss.item()  # train_step reads the loss too

    train_contenders = {"lmforge": lmforge_steps, "eager_fp32": eager_steps}
    _alternate(train_contenders, 1, dev)  # warm-up: kernels, optimizer state
    train_s = _alternate(train_contenders, args.rounds, dev)
    tokens = args.steps * B * T
    train_tps = {name: tokens / s for name, s in train_s.items()}

    # ---- generation, batch 1: carried state vs re-reading the prefix
    task.eval()
    prompt = [int(t) for t in torch.randint(0, V, (7,))]  # as long as "ROMEO: "

    def carried():
        for _ in generate(task, prompt, max_new_tokens=args.chars, temperature=1.0, seed=0):
            pass

    text = prompt + [int(t) for t in generate(task, prompt, max_new_tokens=args.chars, seed=0)]
    if args.recompute_chars:  # the first N steps, exactly
        lengths = [len(prompt) + k for k in range(args.recompute_chars)]
        recompute_steps = args.recompute_chars
    else:  # a step at the midpoint of each of --recompute-points equal slices of the chars
        n = args.recompute_points
        lengths = [len(prompt) + int((i + 0.5) * args.chars / n) for i in range(n)]
        recompute_steps = args.chars  # the mean step time stands for all of them
    generator = torch.Generator(device=dev).manual_seed(0)

    @torch.inference_mode()
    def recompute():
        for length in lengths:
            ids = torch.tensor([text[:length]], device=dev)
            logits = task(ids)[:, -1]  # (1, V), the whole prefix read again
            sample_next_token(logits, temperature=1.0, generator=generator).item()

    gen_contenders = {"carried_state": carried, "recompute": recompute}
    _alternate(gen_contenders, 1, dev)
    gen_s = _alternate(gen_contenders, args.rounds, dev)
    recompute_s = gen_s["recompute"] / len(lengths) * recompute_steps  # for recompute_steps
    gen_cps = {
        "carried_state": args.chars / gen_s["carried_state"],
        "recompute": recompute_steps / recompute_s,
    }
    row = {
        "device": str(dev),
        "threads": threads,
        "precision": precision,
        "preset": args.preset,
        "hidden_dim": cfg["hidden_dim"],
        "params": task.num_params(),
        "batch_size": B,
        "block_size": T,
        "train_tokens_per_s": train_tps,
        "speedup_vs_eager": train_tps["lmforge"] / train_tps["eager_fp32"],
        "chars": args.chars,
        "recompute": (
            f"first {args.recompute_chars} steps timed"
            if args.recompute_chars
            else f"{len(lengths)} of {args.chars} steps timed, evenly spaced"
        ),
        "generate_chars_per_s": gen_cps,
        "speedup_vs_recompute": gen_cps["carried_state"] / gen_cps["recompute"],
        "rounds": args.rounds,
        **machine_fields(),
    }
    if args.json:
        print(json.dumps(row))
    else:
        for k, v in row.items():
            print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
