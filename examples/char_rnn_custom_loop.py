"""Workflow 2, the tutorial's "custom training" part: a char-RNN trained by a hand-written loop.

`fit()` runs the same steps plus logging, evaluation, checkpoints and resume; this loop keeps
only the gradient step, so it is the place to start when you want to change what a step does.

    LMFORGE_DATA_DIR=../shared/data .venv/bin/python examples/char_rnn_custom_loop.py --steps 20
"""

import argparse
from collections.abc import Iterator

import torch

from lmforge.data.batching import EpochBatcher
from lmforge.data.windows import StrideWindows
from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
from lmforge.training.run_data import load_data
from lmforge.training.trainer import TrainConfig, train_step


def train_by_hand(model, batcher, optimizer, num_steps: int) -> Iterator[float]:
    """Run `num_steps` optimizer steps on the batcher's batches; yields each step's loss."""
    model.train()  # dropout on (the tutorial's model has none)
    for _ in range(num_steps):
        # The next 64 windows of this epoch's shuffled order, already on tensors:
        # token_ids (B, 100) and labels (B, 100) = the same characters shifted by one.
        batch = batcher.next_batch()
        # One explicit gradient step: loss = model.loss(batch) (cross-entropy from logits),
        # loss.backward(), optimizer.step(), optimizer.zero_grad(); a NaN loss raises instead.
        yield train_step(model, batch, optimizer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="tinyshakespeare", help="text file or dataset name")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 1 epoch)")
    ap.add_argument("--hidden-dim", type=int, default=1024, help="LSTM units (tutorial: 1024)")
    args = ap.parse_args()

    data = load_data(TrainConfig(data=args.data, tokenizer="char", val_fraction=0.0))
    torch.manual_seed(0)
    config = CharRNNConfig(vocab_size=data.tokenizer.vocab_size, hidden_dim=args.hidden_dim)
    model = CharRNNCausalLM(config)
    # The text cut into disjoint chunks of 100 characters + 1 target (stride 101), reshuffled
    # every epoch, batch 64: on Tiny Shakespeare 11,043 chunks, 172 steps an epoch.
    windows = StrideWindows(data.tokens("train"), 100, stride=101)
    batcher = EpochBatcher(windows, batch_size=64, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # Keras' Adam defaults
    num_steps = args.steps or batcher.batches_per_epoch
    for step, loss in enumerate(train_by_hand(model, batcher, optimizer, num_steps), 1):
        if step % 10 == 0 or step == num_steps:
            print(f"step {step}: loss {loss:.4f}")


if __name__ == "__main__":
    main()
