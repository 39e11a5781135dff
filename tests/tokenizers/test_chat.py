"""messages_to_ids: ChatML for tokenizers that encode it, the plain template for a char
vocabulary that cannot, and a tokenizer folder's own jinja template (sandboxed)."""

import json

import pytest

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import train_tokenizer
from lmforge.tokenizers.chat import load_chat_template, messages_to_ids

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", ["Hello there, be kind to the user.\n" * 20], vocab_size=280)


def test_chatml_for_a_tokenizer_that_encodes_it(bpe):
    template = load_chat_template(bpe)
    assert template.name == "chatml" and template.stop == ["<|im_end|>"]
    ids = messages_to_ids(bpe, MESSAGES, template)
    assert bpe.decode(ids) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = messages_to_ids(bpe, MESSAGES, template, add_generation_prompt=False)
    assert bpe.decode(without).endswith("Hello<|im_end|>\n")


def test_the_plain_template_for_a_char_vocabulary():
    tok = train_tokenizer("char", "User: Hello\nAssistant: Be kind.\nSystem: x\n")
    template = load_chat_template(tok)
    assert template.name == "plain" and template.stop == ["\nUser:"]
    ids = messages_to_ids(tok, MESSAGES, template)
    assert tok.decode(ids) == "System: Be kind.\nUser: Hello\nAssistant:"
    with pytest.raises(DataError, match="cannot be encoded"):
        messages_to_ids(tok, [{"role": "user", "content": "Zzz"}], template)


def test_a_folder_template_is_rendered_in_a_sandbox(bpe, tmp_path):
    source = (
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": source}))
    template = load_chat_template(bpe, tmp_path)
    assert template.name == "jinja"
    text = bpe.decode(messages_to_ids(bpe, MESSAGES, template))
    eos = bpe.eos_token or ""
    assert text == f"[system]Be kind.{eos}[user]Hello{eos}[assistant]"
    (tmp_path / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    with pytest.raises(DataError, match="chat template failed: .*unsafe"):  # the sandbox refuses
        messages_to_ids(bpe, MESSAGES, load_chat_template(bpe, tmp_path))


def test_bad_messages_are_config_errors(bpe):
    with pytest.raises(ConfigError, match=r"messages\[1\] must be"):
        messages_to_ids(bpe, [MESSAGES[0], {"role": "robot", "content": "x"}])
