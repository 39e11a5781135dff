"""Training examples cut from token streams: windows, padded documents, concatenated blocks.

Every example set has `len()` and `get(indices) -> dict` of numpy arrays with `token_ids` (N, T)
and already-shifted `labels` (N, T): labels[t] is the target at position t, -100 = no target.
"""

import numpy as np

IGNORE = -100


class StrideWindows:
    """Windows of `block_size + 1` tokens taken every `stride` tokens (inputs, targets shifted).

    With stride == block_size the windows cover the stream once without overlap: the tutorial's
    char-RNN examples and the exact full-split evaluation. The last, shorter window is padded.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        stride: int | None = None,
        keep_partial: bool = False,
    ):
        self.tokens, self.block_size = tokens, block_size
        self.stride = stride or block_size
        n = len(tokens) - 1  # number of (input, target) pairs
        full = max(0, (n - block_size) // self.stride + 1) if n >= block_size else 0
        self.starts = np.arange(full, dtype=np.int64) * self.stride
        if keep_partial:
            covered = int(self.starts[-1]) + block_size if full else 0
            if covered < n:
                self.starts = np.append(self.starts, covered if full else 0)

    def __len__(self) -> int:
        return len(self.starts)

    def get(self, indices) -> dict:
        starts = self.starts[np.asarray(indices)]
        T, n = self.block_size, len(self.tokens)
        idx = starts[:, None] + np.arange(T + 1)
        valid = idx < n
        window = np.asarray(self.tokens[np.minimum(idx, n - 1)], dtype=np.int64)
        labels = np.where(valid[:, 1:], window[:, 1:], IGNORE)
        token_ids = np.where(valid[:, :-1], window[:, :-1], 0)
        return {"token_ids": token_ids, "labels": labels}


class PaddedDocuments:
    """One example per document, truncated to `length + 1` tokens and right-padded.

    With `dynamic=True` a batch is padded only to its longest document (dynamic padding).
    """

    def __init__(
        self,
        documents: list[np.ndarray],
        length: int,
        pad_id: int = 0,
        dynamic: bool = False,
        end_id: int | None = None,
    ):
        self.documents, self.length, self.pad_id, self.dynamic = documents, length, pad_id, dynamic
        self.end_id = end_id  # appended to documents that fit, so a model learns to stop

    def __len__(self) -> int:
        return len(self.documents)

    def get(self, indices) -> dict:
        docs = [self._with_end(self.documents[i]) for i in np.asarray(indices)]
        T = max(len(d) for d in docs) - 1 if self.dynamic else self.length
        T = max(T, 1)
        ids = np.full((len(docs), T + 1), self.pad_id, dtype=np.int64)
        real = np.zeros((len(docs), T + 1), dtype=bool)
        for row, d in enumerate(docs):
            ids[row, : len(d)] = d
            real[row, : len(d)] = True
        labels = np.where(real[:, 1:], ids[:, 1:], IGNORE)
        return {"token_ids": ids[:, :-1], "labels": labels, "padding_mask": real[:, :-1]}

    def _with_end(self, doc: np.ndarray) -> np.ndarray:
        if self.end_id is not None and len(doc) <= self.length:
            doc = np.append(doc, self.end_id)
        return doc[: self.length + 1]


class ChunkedBlocks:
    """Concatenate everything and cut into blocks of `block_size` tokens, dropping the remainder.

    The causal-LM fine-tuning recipe: labels are the inputs shifted by one inside the block, so
    each block of T tokens gives T - 1 targets. Documents are joined by their end-of-text token,
    which stays a target (the model learns to stop). With `keep_partial` (evaluation, so every
    held-out token is scored) the remainder is a last, shorter block; a batch is then padded to
    its longest block (dynamic padding) with `pad_id` (GPT-2: end-of-text), and the labels are
    masked by position, never by id, so a real end-of-text token is still a target.
    """

    def __init__(
        self, tokens: np.ndarray, block_size: int, pad_id: int = 0, keep_partial: bool = False
    ):
        self.tokens, self.block_size, self.pad_id = tokens, block_size, pad_id
        self.num_blocks = len(tokens) // block_size
        if keep_partial and len(tokens) % block_size > 1:  # one token alone has no target
            self.num_blocks += 1

    def __len__(self) -> int:
        return self.num_blocks

    def get(self, indices) -> dict:
        starts = np.asarray(indices, dtype=np.int64) * self.block_size
        ends = np.minimum(starts + self.block_size, len(self.tokens))
        T = int((ends - starts).max()) if len(starts) else self.block_size
        idx = starts[:, None] + np.arange(T)  # (N, T)
        real = idx < ends[:, None]
        block = np.asarray(self.tokens[np.minimum(idx, len(self.tokens) - 1)], np.int64)
        block = np.where(real, block, self.pad_id)
        labels = np.full_like(block, IGNORE)
        labels[:, :-1] = np.where(real[:, 1:], block[:, 1:], IGNORE)
        batch = {"token_ids": block, "labels": labels}
        if not real.all():
            batch["padding_mask"] = real
        return batch
