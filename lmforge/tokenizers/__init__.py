"""Tokenizers (char, word, bpe, wordpiece, unigram) behind one interface, `base.Tokenizer`.

Nothing is imported here, so `import lmforge.tokenizers.char` stays cheap; import by full path:
`from lmforge.tokenizers.base import load_tokenizer, train_tokenizer`.
"""
