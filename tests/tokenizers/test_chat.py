"""messages_to_ids: the same ids as transformers' apply_chat_template for ChatML, Llama-3 and
Zephyr templates (one BOS, non-ASCII kept); the defaults (ChatML, plain for a char vocabulary);
the sandbox; save_chat_template; fit_messages cutting the oldest turns."""

import json

import pytest

from lmforge.api import load_tokenizer
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.base import train_tokenizer
from lmforge.tokenizers.chat import (
    ChatTemplate,
    fit_messages,
    load_chat_template,
    messages_to_ids,
    save_chat_template,
)

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]
NON_ASCII = [
    {"role": "system", "content": "Réponds en français, s'il te plaît."},
    {"role": "user", "content": "Qu'est-ce qu'un café ? 日本語 ✓"},
    {"role": "assistant", "content": "  Une boisson chaude — très bonne.  "},
    {"role": "user", "content": "Et le thé ?"},
]

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta-Llama-3-8B-Instruct's template: BOS comes from the template, not from the tokenizer
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# HuggingFaceH4/zephyr-7b-beta's: block tags on their own lines (trim_blocks, lstrip_blocks)
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
# tojson with options, as tool-calling templates use it
TOJSON = (
    "{{ bos_token }}{% for m in messages %}{{ m | tojson(indent=2, sort_keys=True) }}"
    "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}>>>{% endif %}"
)
FAMILIES = {  # name -> (template, bos, eos, more special tokens)
    "chatml": (CHATML, "<s>", "<|im_end|>", ["<|im_start|>"]),
    "llama3": (
        LLAMA3,
        "<|begin_of_text|>",
        "<|eot_id|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
    ),  # fmt: skip
    "zephyr": (ZEPHYR, "<s>", "</s>", ["<|user|>", "<|system|>", "<|assistant|>"]),
    "tojson": (TOJSON, "<s>", "</s>", []),
}


def hf_tokenizer_folder(folder, family):
    """A byte-level BPE saved by transformers with the family's special tokens and template; the
    Llama-3 one also adds BOS when asked for special tokens (add_bos_token), as Llama's does."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, processors

    template, bos, eos, more = FAMILIES[family]
    library = tokenizers.Tokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[bos, eos, *more],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    library.train_from_iterator([m["content"] for m in NON_ASCII + MESSAGES] * 10, trainer)
    if family == "llama3":
        bos_id = library.token_to_id(bos)
        library.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, bos_id)]
        )
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=library, bos_token=bos, eos_token=eos, additional_special_tokens=more
    )
    hf.chat_template = template
    hf.save_pretrained(folder)
    if family == "llama3":
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["add_bos_token"] = True
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def hf_chat_ids(folder, messages, add_generation_prompt):
    """transformers' apply_chat_template ids for a tokenizer folder."""
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(folder)
    out = hf.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", ["Hello there, be kind to the user.\n" * 20], vocab_size=280)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_ids_equal_transformers_apply_chat_template(tmp_path, family, add_generation_prompt):
    pytest.importorskip("transformers")
    folder = hf_tokenizer_folder(tmp_path / family, family)
    tok = load_tokenizer(folder)
    template = load_chat_template(tok, folder)
    assert template.name == "jinja" and template.source == FAMILIES[family][0]
    for messages in (MESSAGES, NON_ASCII):
        ids = messages_to_ids(tok, messages, template, add_generation_prompt)
        assert ids == hf_chat_ids(folder, messages, add_generation_prompt)
        if family in ("llama3", "tojson"):  # the template's BOS, once, though add_bos_token
            assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    text = tok.decode(messages_to_ids(tok, NON_ASCII, template, add_generation_prompt))
    assert "日本語 ✓" in text and "\\u" not in text  # tojson keeps non-ASCII too


def test_a_template_stops_at_its_end_marker_token(tmp_path):
    pytest.importorskip("transformers")
    folder = hf_tokenizer_folder(tmp_path / "zephyr", "zephyr")
    tok = load_tokenizer(folder)
    assert load_chat_template(tok, folder).stop_ids(tok) == ()  # </s> is the eos already
    im_end = ChatTemplate("chatml", stop=["<|im_end|>"])
    chatml = load_tokenizer(hf_tokenizer_folder(tmp_path / "chatml", "chatml"))
    assert im_end.stop_ids(chatml) == (chatml.token_to_id("<|im_end|>"),)
    assert im_end.stop_ids(train_tokenizer("bpe", ["<|im_end|> x"] * 5, vocab_size=270)) == ()


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


def test_named_templates_use_the_default_one(bpe, tmp_path):
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "[d]"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert load_chat_template(bpe, tmp_path).source == "[d]"


def test_a_template_that_raises_shows_its_message(bpe):
    source = (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
        "{{ m.content }}{% endfor %}"
    )
    template = ChatTemplate("jinja", source)
    with pytest.raises(DataError, match="refused the messages: Only user and assistant roles"):
        messages_to_ids(bpe, MESSAGES, template)
    assert bpe.decode(messages_to_ids(bpe, MESSAGES[1:], template)) == "Hello"


def test_bad_messages_are_config_errors(bpe):
    with pytest.raises(ConfigError, match=r"messages\[1\] must be"):
        messages_to_ids(bpe, [MESSAGES[0], {"role": "robot", "content": "x"}])
    with pytest.raises(ConfigError, match="JSON list"):
        messages_to_ids(bpe, {"role": "user", "content": "x"})


@pytest.mark.parametrize("name", ["chatml", "plain", "jinja"])
def test_save_chat_template_writes_a_tokenizer_folder(bpe, tmp_path, name):
    run = tmp_path / "run"
    bpe.save(run / "tokenizer")
    (run / "tokenizer" / "chat_template.jinja").write_text("old")  # replaced, not left to win
    template = ChatTemplate(name, "{{ messages[0].content }}!" if name == "jinja" else None)
    save_chat_template(run, template)  # a run folder: its tokenizer/
    config = json.loads((run / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == template.source
    assert not (run / "tokenizer" / "chat_template.jinja").exists()
    again = load_tokenizer(run / "tokenizer")  # the tokenizer carries it too
    assert again.chat_template == template.source
    loaded = load_chat_template(again)
    assert (loaded.name, loaded.source) == (name, template.source)
    stops = {"chatml": ["<|im_end|>"], "plain": ["\nUser:"], "jinja": []}
    assert loaded.stop == stops[name]  # a default comes back with its stop string


def test_fit_messages_cuts_the_oldest_turns_and_keeps_the_system_message(bpe):
    turns = [{"role": "system", "content": "Be kind."}]
    for i in range(4):
        turns += [{"role": "user", "content": f"Hello {i}"}, {"role": "assistant", "content": "Hi"}]
    turns.append({"role": "user", "content": "Hello there"})
    template = load_chat_template(bpe)
    full = messages_to_ids(bpe, turns, template)
    kept, ids = fit_messages(bpe, turns, template, None)
    assert kept == turns and ids == full
    last_two = [turns[0], *turns[-3:]]
    limit = len(messages_to_ids(bpe, last_two, template))
    kept, ids = fit_messages(bpe, turns, template, limit)
    assert kept == last_two and ids == messages_to_ids(bpe, last_two, template)
    with pytest.raises(ConfigError, match="last message alone takes"):
        fit_messages(bpe, turns, template, 5)
