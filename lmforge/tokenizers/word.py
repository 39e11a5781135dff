"""Word tokenizer: lower-cased words, each punctuation mark its own token, capped vocabulary.

Built on `tokenizers` (WordLevel model), so it encodes in Rust threads like the subword kinds;
[PAD] is always id 0 and [UNK] id 1. Decoding joins tokens with single spaces.
"""

from collections.abc import Iterable

import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

from lmforge.tokenizers.subword import SubwordTokenizer, check_vocab_size, train_model

WORD_SPECIALS = ("[PAD]", "[UNK]")


class WordTokenizer(SubwordTokenizer):
    """Whole lower-cased words; "Fruit, and" -> ["fruit", ",", "and"]; unseen words -> [UNK].

    tok = WordTokenizer.train(descriptions, vocab_size=10000)
    tok.decode(tok.encode("Crisp, dry.")) == "crisp , dry ."
    """

    kind = "word"

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, special: dict[str, str | None] | None = None
    ) -> None:
        super().__init__(tokenizer, "word", special)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 10000,
        reserved_tokens: Iterable[str] = WORD_SPECIALS,
    ) -> "WordTokenizer":
        """Keep the `vocab_size` most frequent words (specials included) of texts.

        Args:
            reserved_tokens: special tokens taking the first ids; [PAD] and [UNK] always come
                first (ids 0 and 1), e.g. ("[PAD]", "[UNK]", "[START]", "[END]").
        """
        reserved = list(dict.fromkeys([*WORD_SPECIALS, *reserved_tokens]))
        check_vocab_size("word", vocab_size, len(reserved), "its special tokens")
        tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        # splits on whitespace and makes every punctuation character a token of its own
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, special_tokens=reserved, show_progress=False
        )
        train_model(tok, texts, trainer, "word")
        return cls(tok)
