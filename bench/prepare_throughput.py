"""Throughput of `lmforge prepare` beside encoding the same text directly (run by hand).

Writes a corpus of at least --mb MB (the IMDB reviews, one per line, repeated as needed), trains a
char and a byte-level BPE tokenizer on it once (not timed), then times `prepare` with each
tokenizer folder at 1 and 2 processes, beside encoding the same text directly, already in memory:
`tokenizers`' own `encode_batch` over the lines (BPE), and the char tokenizer's numpy lookup
straight into uint16, in the pieces `prepare` uses (char). For char, whose lookup is so fast
that reading and writing the files dominate, a third figure is the bare job by hand: a plain
streaming loop that reads the file in those pieces, looks each up and appends its ids to one
file (no split, no fingerprint, no progress): the floor for any pipeline that reads and writes.
Measurements alternate, so a busy spell of the machine hits all alike; medians are reported.

    python bench/prepare_throughput.py            # a human summary
    python bench/prepare_throughput.py --json     # one JSON line
"""

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import machine_fields

from lmforge.data.corpus import open_source
from lmforge.data.prepare import _PIECE_CHARS, PrepareConfig, prepare
from lmforge.system import usable_cpus
from lmforge.tokenizers.base import load_tokenizer, train_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BPE_VOCAB = 8000  # the bpe default of `lmforge prepare`
BPE_TRAIN_CHARS = 5_000_000  # the BPE tokenizer learns from the first 5M characters
DIRECT_BATCH_CHARS = 1 << 20  # text per direct call: bounded memory, no giant numpy arrays


def build_corpus(folder: Path, min_mb: float) -> Path:
    """IMDB reviews, one per line, repeated until the file holds at least min_mb MB."""
    if not os.environ.get("LMFORGE_DATA_DIR") and SHARED_DATA.is_dir():
        os.environ["LMFORGE_DATA_DIR"] = str(SHARED_DATA)
    reviews = "".join(
        d.text.replace("\n", " ") + "\n" for d in open_source("imdb").iter_documents()
    )
    data = reviews.encode("utf-8")
    num_bytes = int(min_mb * 1e6)
    data = data * math.ceil(num_bytes / len(data))
    path = folder / "imdb-reviews.txt"
    path.write_bytes(data[: data.index(b"\n", num_bytes - 1) + 1])  # whole lines only
    return path


def time_pipeline(corpus: Path, tokenizer: Path, num_proc: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    prepare(PrepareConfig(data=str(corpus), tokenizer=str(tokenizer), num_proc=num_proc), out)
    return time.perf_counter() - start


def time_direct_bpe(lib, lines: list[str], fast: bool) -> float:
    encode = lib.encode_batch_fast if fast else lib.encode_batch
    batches, batch, size = [], [], 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= DIRECT_BATCH_CHARS:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)
    start = time.perf_counter()
    for batch in batches:
        encode(batch, add_special_tokens=False)
    return time.perf_counter() - start


def time_direct_char(tokenizer, text: str) -> float:
    start = time.perf_counter()
    for i in range(0, len(text), _PIECE_CHARS):  # the fastest piece size, as in `prepare`
        tokenizer.encode_array(text[i : i + _PIECE_CHARS], np.uint16)
    return time.perf_counter() - start


def time_by_hand_char(tokenizer, corpus: Path, out: Path) -> float:
    """Read the text in pieces, look each up, append its ids: the bare streaming job."""
    start = time.perf_counter()
    with open(corpus, encoding="utf-8") as text, open(out / "tokens.bin", "wb") as tokens:
        while piece := text.read(_PIECE_CHARS):
            tokens.write(tokenizer.encode_array(piece, np.uint16).data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default: 50)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = build_corpus(tmp, args.mb)
        num_mb = corpus.stat().st_size / 1e6
        text = corpus.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        train_tokenizer("char", [text]).save(tmp / "char")
        train_tokenizer("bpe", [text[:BPE_TRAIN_CHARS]], vocab_size=BPE_VOCAB).save(tmp / "bpe")
        char, bpe = load_tokenizer(tmp / "char"), load_tokenizer(tmp / "bpe")
        (tmp / "by-hand").mkdir()

        runs = {
            "char_1proc": lambda: time_pipeline(corpus, tmp / "char", 1, tmp / "out"),
            "char_2proc": lambda: time_pipeline(corpus, tmp / "char", 2, tmp / "out"),
            "char_direct": lambda: time_direct_char(char, text),
            "char_by_hand": lambda: time_by_hand_char(char, corpus, tmp / "by-hand"),
            "bpe_1proc": lambda: time_pipeline(corpus, tmp / "bpe", 1, tmp / "out"),
            "bpe_2proc": lambda: time_pipeline(corpus, tmp / "bpe", 2, tmp / "out"),
            "bpe_direct": lambda: time_direct_bpe(bpe.tokenizer, lines, fast=False),
            "bpe_direct_fast": lambda: time_direct_bpe(bpe.tokenizer, lines, fast=True),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds[name].append(run())
    rate = {name: num_mb / statistics.median(s) for name, s in seconds.items()}

    result = {
        "corpus_mb": round(num_mb, 1),
        "repeats": args.repeats,
        "cpus": usable_cpus(),
        "char_mb_per_s_1proc": rate["char_1proc"],
        "char_mb_per_s_2proc": rate["char_2proc"],
        "char_direct_mb_per_s": rate["char_direct"],
        "char_by_hand_mb_per_s": rate["char_by_hand"],
        "bpe_mb_per_s_1proc": rate["bpe_1proc"],
        "bpe_mb_per_s_2proc": rate["bpe_2proc"],
        "bpe_direct_mb_per_s": rate["bpe_direct"],
        "bpe_direct_fast_mb_per_s": rate["bpe_direct_fast"],
        "speedup_vs_direct_char": max(rate["char_1proc"], rate["char_2proc"]) / rate["char_direct"],
        "speedup_vs_by_hand_char": max(rate["char_1proc"], rate["char_2proc"])
        / rate["char_by_hand"],
        "speedup_vs_direct_bpe": max(rate["bpe_1proc"], rate["bpe_2proc"]) / rate["bpe_direct"],
        "speedup_vs_direct_fast_bpe": max(rate["bpe_1proc"], rate["bpe_2proc"])
        / rate["bpe_direct_fast"],
    }
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    result.update(machine_fields())
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"corpus: {num_mb:.1f} MB of IMDB reviews, {result['cpus']} CPUs, median of {args.repeats}"
    )
    for kind in ("char", "bpe"):
        print(
            f"{kind:>4}: prepare {rate[f'{kind}_1proc']:8.2f} MB/s (1 proc) "
            f"{rate[f'{kind}_2proc']:8.2f} MB/s (2 procs); direct {rate[f'{kind}_direct']:8.2f} "
            f"MB/s; best prepare / direct = {result[f'speedup_vs_direct_{kind}']:.2f}x"
        )
    print(
        f"      (char by hand, a streaming read + lookup + write: {rate['char_by_hand']:.2f} MB/s; "
        f"best prepare / that = {result['speedup_vs_by_hand_char']:.2f}x)"
    )
    print(
        f"      (bpe direct with encode_batch_fast: {rate['bpe_direct_fast']:.2f} MB/s; "
        f"best prepare / that = {result['speedup_vs_direct_fast_bpe']:.2f}x)"
    )


if __name__ == "__main__":  # prepare's worker processes are spawned: they import this file
    main()
