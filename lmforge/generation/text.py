"""Text around the token ids: encoding a prompt, which ids stop a row or stay out of the text,
and TextStream, which turns tokens into text pieces as they become safe to show.
"""

from lmforge.errors import ConfigError


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids, after bos where the tokenizer says prompts start with it (Llama's)."""
    ids = list(tokenizer.encode(prompt))
    bos = getattr(tokenizer, "bos_id", None)
    if getattr(tokenizer, "add_bos_token", False) and bos is not None:
        return [bos] + ids
    if ids:
        return ids
    # An empty prompt starts from the start token, else from end-of-text (GPT-2's convention).
    for start in (getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)):
        if start is not None:
            return [start]
    raise ConfigError(
        "the prompt encodes to no tokens and the tokenizer has no bos/eos token; "
        "give a non-empty prompt"
    )


def text_options(tokenizer, stop, sampling) -> tuple[list[str], set[int], set[int]]:
    """(stop strings, stop token ids, ids left out of the text): texts are decoded without
    special tokens (end-of-text, padding, ...) even where they do not stop a row; the unknown
    token stays, as it stands for text."""
    # Every end-of-text id (a Hugging Face generation_config.json may list several); without
    # one, documents were trained to end with padding (Keras-style).
    eos = getattr(tokenizer, "eos_id", None)
    ends = tuple(getattr(tokenizer, "eos_ids", ())) or (() if eos is None else (eos,))
    if not ends and getattr(tokenizer, "pad_id", None) is not None:
        ends = (tokenizer.pad_id,)
    sampling.setdefault("stop_token_ids", ends)
    stop = [stop] if isinstance(stop, str) else stop or ()
    stop_ids = set(sampling["stop_token_ids"])
    special = tokenizer.special_ids() if hasattr(tokenizer, "special_ids") else set()
    hidden = stop_ids | (set(special) - {getattr(tokenizer, "unk_id", None)})
    return [s for s in stop if s], stop_ids, hidden


def _release(text: str, sent: int, stops: list[str], final: bool) -> tuple[str, int, bool]:
    """What of text[sent:] can go out now: (piece, new sent, hit a stop string)."""
    if not stops:
        return text[sent:], len(text), False
    # Held-back text never ends in a stop string's prefix, so a match starts at `sent` or later.
    hits = [i for i in (text.find(s, sent) for s in stops) if i >= 0]
    if hits:
        return text[sent : min(hits)], min(hits), True
    end = len(text)
    if not final:  # hold back a tail that may grow into a stop string
        for k in range(min(max(map(len, stops)) - 1, end - sent), 0, -1):
            if any(s.startswith(text[end - k :]) for s in stops):
                end -= k
                break
    return text[sent:end], end, False


class TextStream:
    """Token ids in, text out in pieces as it becomes safe: decoding is incremental over the whole
    output, so a character split across byte-level BPE tokens comes out whole, and a tail that
    may still grow into a stop string is held back; the stop string itself never comes out.

    Args:
        prompt_ids: the last few give the decoder context (leading spaces, merges).
        hidden: ids left out of the text (special tokens).
    """

    def __init__(self, tokenizer, prompt_ids, stops: list[str], hidden=frozenset()):
        self.tokenizer, self.stops, self.hidden = tokenizer, stops, hidden
        self.ids = list(prompt_ids[-4:])
        self.prefix, self.read = 0, len(self.ids)
        self.text, self.sent = "", 0
        self.stopped = False  # a stop string was found: nothing more comes out

    def push(self, token: int) -> str:
        """Add one token; return the text that can go out now (often "")."""
        if self.stopped or token in self.hidden:
            return ""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read])
        after = decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):  # mid-character
            return ""
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        piece, self.sent, self.stopped = _release(self.text, self.sent, self.stops, final=False)
        return piece

    def finish(self) -> str:
        """The rest of the text once no token follows (an unfinished character included)."""
        if self.stopped:
            return ""
        if self.read < len(self.ids):
            decode = self.tokenizer.decode
            tail = decode(self.ids[self.prefix :])
            self.text += tail[len(decode(self.ids[self.prefix : self.read])) :]
            self.read = len(self.ids)
        piece, self.sent, self.stopped = _release(self.text, self.sent, self.stops, final=True)
        return piece
