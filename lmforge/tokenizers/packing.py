"""Packers: lists of token ids -> fixed-length rows with start/end/pad tokens, segment ids and a
padding mask (True = real token), as numpy arrays ready for a batcher.

Packers truncate content that does not fit and count it in `num_truncated` (rows cut so far), so
the caller can say once how many texts were cut. They never tokenize: a preprocessor does.
"""

from collections.abc import Sequence

import numpy as np

from lmforge.errors import ConfigError

TRUNCATIONS = ("round_robin", "waterfall")
SEQUENCE_KEYS = ("token_ids", "segment_ids", "padding_mask")  # (N, T) arrays, one entry a token


def _rows_to_array(rows: Sequence[Sequence[int]], length: int, pad_value: int) -> np.ndarray:
    """Right-pad rows of at most `length` ids into an (N, length) int64 array."""
    out = np.full((len(rows), length), pad_value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _as_rows(ids) -> list:
    """One sequence of ids or a batch of them -> a list of sequences."""
    if isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype != object:
        return [ids]
    if len(ids) and np.isscalar(ids[0]):
        return [ids]
    return list(ids)


class StartEndPacker:
    """Add a start and an end token, truncate to `sequence_length`, pad on the right.

    Args:
        sequence_length: T, the length of every packed row (start and end tokens included).
        start_value, end_value: ids put before / after the content; None for none.
        pad_value: id that fills the rest of the row.

    Example:
        packer = StartEndPacker(8, start_value=2, end_value=3, pad_value=0)
        packer([[10, 11, 12]])["token_ids"]  # [[2, 10, 11, 12, 3, 0, 0, 0]]
    """

    def __init__(
        self,
        sequence_length: int,
        start_value: int | None = None,
        end_value: int | None = None,
        pad_value: int = 0,
    ):
        num_special = (start_value is not None) + (end_value is not None)
        if sequence_length <= num_special:
            raise ConfigError(
                f"sequence_length={sequence_length} leaves no room for text next to "
                f"{num_special} start/end token(s); use a longer sequence length"
            )
        self.sequence_length = sequence_length
        self.start_value, self.end_value, self.pad_value = start_value, end_value, pad_value
        self.room = sequence_length - num_special
        self.num_truncated = 0

    def __call__(self, ids) -> dict[str, np.ndarray]:
        """Pack one id sequence or a batch of them: "token_ids" and "padding_mask", (N, T)."""
        rows = _as_rows(ids)
        T, first = self.sequence_length, int(self.start_value is not None)
        token_ids = np.full((len(rows), T), self.pad_value, dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)  # content tokens kept per row
        for i, row in enumerate(rows):
            n = min(len(row), self.room)
            self.num_truncated += len(row) > self.room
            token_ids[i, first : first + n] = row[:n]
            lengths[i] = n
        if self.start_value is not None:
            token_ids[:, 0] = self.start_value
        if self.end_value is not None:
            token_ids[np.arange(len(rows)), first + lengths] = self.end_value
        total = lengths + first + int(self.end_value is not None)
        padding_mask = np.arange(T)[None, :] < total[:, None]
        return {"token_ids": token_ids, "padding_mask": padding_mask}


def trim_lengths(lengths: Sequence[int], budget: int, truncate: str = "round_robin") -> list[int]:
    """How many tokens each segment keeps so that together they fit in `budget`.

    round_robin gives one token to each segment in turn (short segments keep everything, long ones
    share the rest evenly; earlier segments get the odd token); waterfall fills the first segment,
    then the second with what is left, and so on.
    """
    if truncate not in TRUNCATIONS:
        raise ConfigError(f"truncate={truncate!r} is unknown; use one of {', '.join(TRUNCATIONS)}")
    lengths = [int(n) for n in lengths]
    if sum(lengths) <= budget:
        return lengths
    if truncate == "waterfall":
        kept = []
        for n in lengths:
            kept.append(min(n, budget))
            budget -= kept[-1]
        return kept
    # Water filling: the largest level k with sum(min(n, k)) <= budget, then the leftover tokens
    # go one each to the first segments still longer than k (round-robin order).
    level = 0
    while sum(min(n, level + 1) for n in lengths) <= budget:
        level += 1
    kept = [min(n, level) for n in lengths]
    left = budget - sum(kept)
    for i, n in enumerate(lengths):
        if left and n > level:
            kept[i] += 1
            left -= 1
    return kept


class MultiSegmentPacker:
    """Pack one or more segments as `[CLS] a [SEP] b [SEP] ...` with segment ids 0, 1, ...

    The start token and the first segment's end token belong to segment 0; each later segment
    and its end token to the next id (BERT's token_type_ids).

    Args:
        sequence_length: T, the length of every packed row.
        start_value, end_value, pad_value: the [CLS], [SEP] and [PAD] ids.
        truncate: "round_robin" (trim every segment evenly) or "waterfall" (keep the first
            segment whole, trim the later ones).

    Example:
        packer = MultiSegmentPacker(8, start_value=1, end_value=2, pad_value=0)
        out = packer([[5, 6, 7]], [[8, 9]])
        out["token_ids"]    # [[1, 5, 6, 7, 2, 8, 9, 2]]
        out["segment_ids"]  # [[0, 0, 0, 0, 0, 1, 1, 1]]
    """

    def __init__(
        self,
        sequence_length: int,
        start_value: int,
        end_value: int,
        pad_value: int = 0,
        truncate: str = "round_robin",
    ):
        if truncate not in TRUNCATIONS:
            raise ConfigError(
                f"truncate={truncate!r} is unknown; use one of {', '.join(TRUNCATIONS)}"
            )
        self.sequence_length = sequence_length
        self.start_value, self.end_value, self.pad_value = start_value, end_value, pad_value
        self.truncate = truncate
        self.num_truncated = 0

    def __call__(self, *segments) -> dict[str, np.ndarray]:
        """Pack N rows of each segment: "token_ids", "segment_ids", "padding_mask", all (N, T)."""
        if not segments:
            raise ConfigError("MultiSegmentPacker needs at least one segment")
        columns = [_as_rows(s) for s in segments]
        if len({len(c) for c in columns}) != 1:
            raise ConfigError(
                f"segments hold different numbers of rows ({[len(c) for c in columns]}); "
                "pass one entry per example in every segment"
            )
        budget = self.sequence_length - 1 - len(columns)
        if budget < len(columns):
            raise ConfigError(
                f"sequence_length={self.sequence_length} leaves no room for {len(columns)} "
                "segments and their special tokens; use a longer sequence length"
            )
        ids_rows, seg_rows = [], []
        for parts in zip(*columns):
            parts = [list(p) for p in parts]
            kept = trim_lengths([len(p) for p in parts], budget, self.truncate)
            if kept != [len(p) for p in parts]:
                self.num_truncated += 1
            ids, segs = [self.start_value], [0]
            for s, (part, n) in enumerate(zip(parts, kept)):
                ids += part[:n] + [self.end_value]
                segs += [s] * (n + 1)
            ids_rows.append(ids)
            seg_rows.append(segs)
        T = self.sequence_length
        lengths = np.array([len(r) for r in ids_rows], dtype=np.int64)
        return {
            "token_ids": _rows_to_array(ids_rows, T, self.pad_value),
            "segment_ids": _rows_to_array(seg_rows, T, 0),
            "padding_mask": np.arange(T)[None, :] < lengths[:, None],
        }


class PackedExamples:
    """An example set over equally long arrays (packed once, reused every epoch).

    `get(indices)` returns those rows as int64 (bool stays bool); with `dynamic=True` the columns
    of SEQUENCE_KEYS past the batch's longest row (by "padding_mask") are dropped, so batches of
    short texts cost less (dynamic padding, right-padded rows only).
    """

    def __init__(self, arrays: dict[str, np.ndarray], dynamic: bool = True):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ConfigError(f"packed arrays differ in length: {sorted(sizes)}")
        self.arrays, self.dynamic = arrays, dynamic
        ids = arrays.get("token_ids")
        self.length = ids.shape[1] if ids is not None and ids.ndim == 2 else 1  # T, at most

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def get(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices)
        rows = {k: v[indices] for k, v in self.arrays.items()}
        mask = rows.get("padding_mask")
        if self.dynamic and mask is not None and len(mask):
            T = max(1, int(mask.sum(axis=1).max()))
            rows = {k: v[:, :T] if k in SEQUENCE_KEYS else v for k, v in rows.items()}
        return {k: v.astype(np.int64) if v.dtype.kind in "iu" else v for k, v in rows.items()}
