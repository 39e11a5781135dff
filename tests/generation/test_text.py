"""Prompt encoding and the ids that end a text, from a tokenizer's Hugging Face metadata."""

from lmforge.generation.text import encode_prompt, text_options
from lmforge.tokenizers.base import train_tokenizer

TEXTS = ["the cat sat on the mat.", "The dog, the cat; a bird!"] * 10


def test_prompts_start_with_bos_when_the_tokenizer_says_so():
    tok = train_tokenizer("bpe", TEXTS, vocab_size=300)
    plain = encode_prompt(tok, "the cat")
    assert plain == tok.encode("the cat")
    tok.add_bos_token = True
    assert encode_prompt(tok, "the cat") == [tok.bos_id] + plain


def test_every_eos_id_stops_a_row():
    tok = train_tokenizer("bpe", TEXTS, vocab_size=300)
    other = tok.encode("cat")[0]
    tok.extra_eos_ids = (other,)
    _, stop_ids, hidden = text_options(tok, None, sampling := {})
    assert stop_ids == {tok.eos_id, other} and sampling["stop_token_ids"] == (tok.eos_id, other)
    assert {tok.eos_id, other} <= hidden  # ending ids stay out of the text
