"""Supervised fine-tuning data: which tokens carry loss, record formats, --field maps, packing,
`lmforge train --task sft` end to end, and its bad input."""

import json

import numpy as np
import pytest
import torch

from lmforge.cli.main import main
from lmforge.data.sft import (
    PackedSFTExamples,
    SFTExamples,
    SFTRecords,
    encode_conversation,
    encode_conversations,
    fit_to_block,
    parse_field_map,
    read_records,
    to_conversations,
)
from lmforge.data.windows import IGNORE
from lmforge.errors import ConfigError, DataError
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.models.llama import LlamaCausalLM, LlamaConfig
from lmforge.tokenizers.base import train_tokenizer
from lmforge.tokenizers.chat import (
    CHATML_TEMPLATE,
    ChatTemplate,
    load_chat_template,
    messages_to_ids,
)
from tests.cli.test_train import _error  # one line, exit 2, no traceback

CHATML = ChatTemplate("chatml", stop=["<|im_end|>"])
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Sky colour?"},
    {"role": "assistant", "content": "Blue."},
]


def _char_tokenizer(conversations):
    texts = [CHATML.render(c, add_generation_prompt=False) for c in conversations]
    return train_tokenizer("char", texts)


def test_loss_covers_exactly_the_assistant_turns_of_a_two_turn_conversation():
    tok = _char_tokenizer([TWO_TURNS])  # one id per character: positions are text offsets
    text = CHATML.render(TWO_TURNS, add_generation_prompt=False)
    ids, is_answer = encode_conversation(tok, TWO_TURNS, CHATML)
    first, second = "Hello.<|im_end|>\n", "Blue.<|im_end|>\n"
    a, b = text.index(first), text.index(second)
    expected = [*range(a, a + len(first)), *range(b, b + len(second))]
    assert np.flatnonzero(is_answer).tolist() == expected
    assert ids.tolist() == messages_to_ids(tok, TWO_TURNS, CHATML, add_generation_prompt=False)
    # shifted: the label at t is the token at t + 1, kept only where that token is an answer's
    batch = SFTExamples(SFTRecords([ids], [is_answer]), pad_id=0, block_size=256).get([0])
    assert np.flatnonzero(batch["labels"][0] != IGNORE).tolist() == [p - 1 for p in expected]
    assert tok.decode(batch["labels"][0][batch["labels"][0] != IGNORE].tolist()) == first + second


def test_answer_tokens_of_a_byte_level_bpe_decode_to_the_answers():
    tok = train_tokenizer("bpe", [CHATML.render(TWO_TURNS, False)] * 20, vocab_size=300)
    ids, is_answer = encode_conversation(tok, TWO_TURNS, CHATML)
    assert tok.decode(ids[is_answer].tolist()) == "Hello.<|im_end|>\nBlue.<|im_end|>\n"


def test_train_on_prompt_puts_loss_on_every_token():
    tok = _char_tokenizer([TWO_TURNS])
    records = encode_conversations([TWO_TURNS], tok, CHATML, train_on_prompt=True)
    assert records.targets[0].all()


def test_a_template_that_refuses_a_conversation_names_the_record():
    source = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['role'] + '\\n' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant\\n{% endif %}"
    )
    template = ChatTemplate("jinja", source)
    tok = train_tokenizer("bpe", [CHATML.render(TWO_TURNS, False)] * 20, vocab_size=300)
    ok = encode_conversations([TWO_TURNS[1:]], tok, template)
    answers = tok.decode(ok.ids[0][ok.targets[0]].tolist())  # + the boundary token where ids part
    assert answers.split() == ["Hello.", "Blue."]
    with pytest.raises(DataError, match="record 2: .*System role not supported"):
        encode_conversations([TWO_TURNS[1:], TWO_TURNS], tok, template)


def test_formats_are_detected_from_the_first_record():
    pc = to_conversations([{"prompt": "2+2?", "completion": "4"}])
    assert pc == [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    alpaca = to_conversations(
        [
            {"instruction": "Add.", "input": "2 and 2", "output": "4"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
        ]
    )
    assert alpaca[0][0] == {"role": "user", "content": "Add.\n\n2 and 2"}
    assert alpaca[1] == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi"},
    ]
    chat = to_conversations([{"messages": TWO_TURNS, "id": 3}])
    assert chat == [TWO_TURNS]


def test_field_map_reads_dotted_paths_and_joins_lists():
    fields = parse_field_map("prompt=q.title, completion=answers.text,system=sys")
    assert fields == {"prompt": "q.title", "completion": "answers.text", "system": "sys"}
    record = {"q": {"title": "Why?"}, "answers": {"text": ["One.", "Two."]}, "sys": "Be kind."}
    assert to_conversations([record], fields) == [
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "One.\n\nTwo."},
        ]
    ]
    first = to_conversations([record], parse_field_map("prompt=q.title,completion=answers.text.0"))
    assert first[0][1]["content"] == "One."
    with pytest.raises(ConfigError, match="NAME=FIELD"):
        parse_field_map("question")


def test_json_list_and_jsonl_read_the_same_records(tmp_path):
    records = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "r.json").write_text(json.dumps(records))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_records(tmp_path / "r.json") == read_records(tmp_path / "r.jsonl") == records


def test_long_examples_lose_the_start_of_their_prompt_or_are_dropped():
    ids = [np.arange(10), np.arange(10), np.arange(4)]
    targets = [np.arange(10) >= 7, np.arange(10) >= 2, np.arange(4) >= 2]
    kept = fit_to_block(SFTRecords(ids, targets), block_size=5)
    assert [r.tolist() for r in kept.ids] == [list(range(4, 10)), [0, 1, 2, 3]]
    assert kept.targets[0].tolist() == [False, False, False, True, True, True]
    with pytest.raises(DataError, match="--block-size"):
        fit_to_block(SFTRecords(ids[1:2], targets[1:2]), block_size=5)


@pytest.mark.parametrize(
    "model",
    [
        GPTCausalLM(GPTConfig(vocab_size=40, max_seq_len=32)),
        GPTCausalLM(GPTConfig(vocab_size=40, max_seq_len=32, position="rotary")),
        LlamaCausalLM(LlamaConfig(vocab_size=40, max_seq_len=32, num_kv_heads=1)),
    ],
    ids=["gpt-learned", "gpt-rotary", "llama"],
)
def test_packed_row_gives_each_example_the_logits_it_has_alone(model):
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 40, n) for n in (9, 6, 12, 4)]
    targets = [np.arange(len(r)) >= 2 for r in ids]
    packed = PackedSFTExamples(SFTRecords(ids, targets), pad_id=0, block_size=16)
    assert packed.rows == [[2, 1], [0, 3]]  # 11 + 5 inputs, 8 + 3 (+ 5 pad): first-fit decreasing
    batch = {k: torch.from_numpy(v) for k, v in packed.get(np.arange(len(packed))).items()}
    model.eval()
    with torch.no_grad():
        logits = model(batch["token_ids"], document_ids=batch["document_ids"])
        seen = 0
        for row, members in enumerate(packed.rows):
            at = 0
            for i in members:
                alone = model(torch.from_numpy(ids[i][None, :-1]))[0]
                n = len(ids[i]) - 1
                torch.testing.assert_close(logits[row, at : at + n], alone, atol=1e-5, rtol=1e-4)
                labels = np.where(targets[i][1:], ids[i][1:], IGNORE)
                assert batch["labels"][row, at : at + n].tolist() == labels.tolist()
                at, seen = at + n, seen + 1
            assert (batch["labels"][row, at:] == IGNORE).all()
            assert (batch["document_ids"][row, at:] == 0).all()
    assert seen == len(ids)


def _records(path, n=40):
    rows = [
        {"prompt": f"What is {i % 7} and {i % 5}?", "completion": f"{i % 7 + i % 5}."}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


TINY = [
    *("--preset", "gpt-baby", "--num-layers", "1", "--embed-dim", "32", "--num-heads", "2"),
    *("--ffn-dim", "64", "--max-seq-len", "64", "--batch-size", "4", "--threads", "1"),
    *("--eval-every", "1000", "--warmup-steps", "2"),
]


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_train_task_sft_end_to_end(tmp_path, capsys, pack):
    out = tmp_path / "run"
    data = _records(tmp_path / "qa.jsonl")
    flags = ["--pack"] if pack else []
    code = main(
        ["train", "--task", "sft", "--data", str(data), *TINY, "--max-steps", "12"]
        + ["--lr", "3e-3", "--out", str(out), "--json", *flags]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 12
    assert result["val_perplexity"] == pytest.approx(np.exp(result["val_loss"]), rel=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["task"] == "sft" and config["train"]["pack"] is pack
    assert config["data"]["batching"] == ("sft-packed" if pack else "sft-padded")
    saved = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == CHATML_TEMPLATE  # the default, written out
    import lmforge

    model = lmforge.load(out)
    tok = lmforge.load_tokenizer(out / "tokenizer")
    assert load_chat_template(tok, out).name == "chatml"
    ids = messages_to_ids(tok, [{"role": "user", "content": "1?"}])
    assert model(torch.tensor([ids])).shape == (1, len(ids), tok.vocab_size)
    assert main(["eval", str(out), "--json"]) == 0  # the held-out answers, scored as in training
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["loss"] == pytest.approx(result["val_loss"], rel=1e-5)
    assert main(["eval", str(out), "--data", str(data), "--json"]) == 0  # every record
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] > scored["tokens"]


def test_train_task_sft_packs_a_llama(tmp_path, capsys):
    out, data = tmp_path / "run", _records(tmp_path / "qa.jsonl")
    llama = ["--preset", "llama-shakespeare", "--num-layers", "1", "--embed-dim", "32"]
    llama += ["--num-heads", "2", "--num-kv-heads", "1", "--ffn-dim", "64", "--max-seq-len", "64"]
    argv = ["train", "--task", "sft", "--pack", "--data", str(data), *llama, "--batch-size", "4"]
    argv += ["--max-steps", "6", "--optimizer", "adamw", "--threads", "1", "--json"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 6 and np.isfinite(result["val_loss"])
    assert json.loads((out / "config.json").read_text())["family"] == "llama"


def test_held_out_loss_is_the_answers_only(tmp_path, capsys):
    """The final val_loss equals the loss over the held-out records' answer tokens alone."""
    import lmforge
    from lmforge.data.sft import split_records

    out, data = tmp_path / "run", _records(tmp_path / "qa.jsonl")
    assert (
        main(
            ["train", "--task", "sft", "--data", str(data), *TINY, "--max-steps", "3"]
            + ["--out", str(out), "--json", "--precision", "fp32"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tok = lmforge.load_tokenizer(out / "tokenizer")
    conversations = to_conversations(read_records(data))
    records = encode_conversations(conversations, tok, load_chat_template(tok, out))
    val = fit_to_block(split_records(records, 0.1, 1337)[1], block_size=64)  # as trained
    model, total, count = lmforge.load(out), 0.0, 0
    with torch.no_grad():
        for ids, target in zip(val.ids, val.targets):
            logits = model(torch.from_numpy(ids[None, :-1]))[0].float()
            losses = torch.nn.functional.cross_entropy(
                logits, torch.from_numpy(ids[1:]), reduction="none"
            )
            keep = torch.from_numpy(target[1:])
            total, count = total + float(losses[keep].sum()), count + int(keep.sum())
    assert result["val_loss"] == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "answer": "d"}\n',
            ["record 2", "'completion'", "--field completion="],
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n',
            ["record 1", "'bot'", "user"],
        ),
        ("", ["holds no records"]),
        ("[]", ["holds no records"]),
        ('{"question": "a", "reply": "b"}\n', ["fit no SFT format", "--field prompt="]),
    ],
    ids=["missing-field", "bad-role", "empty-jsonl", "empty-json", "unknown-format"],
)
def test_bad_records_fail_in_one_line(tmp_path, capsys, content, expected):
    data = tmp_path / ("data.json" if content.startswith("[") else "data.jsonl")
    data.write_text(content)
    out = tmp_path / "run"
    err = _error(capsys, ["train", "--task", "sft", "--data", str(data), *TINY, "--out", str(out)])
    assert all(part in err for part in expected), err
    assert not out.exists()


def test_sft_refuses_families_without_a_causal_lm_and_pack_without_sft(tmp_path, capsys):
    data = _records(tmp_path / "qa.jsonl")
    err = _error(capsys, ["train", "--task", "sft", "--preset", "bert-tiny", "--data", str(data)])
    assert "gpt or llama preset" in err
    err = _error(capsys, ["train", "--pack", "--data", str(data), "--out", str(tmp_path / "r")])
    assert "--task sft" in err


def test_sft_run_resumes_exactly(tmp_path, capsys):
    # A constant schedule: `--max-steps 4` then `--resume --max-steps 8` (the total).
    data = _records(tmp_path / "qa.jsonl")
    base = ["train", "--task", "sft", "--pack", "--data", str(data), *TINY, "--json"]
    base += ["--schedule", "constant", "--warmup-steps", "0"]

    def final(argv) -> dict:
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    straight = final([*base, "--max-steps", "8", "--out", str(tmp_path / "a")])
    final([*base, "--max-steps", "4", "--out", str(tmp_path / "b")])
    resume = ["train", "--out", str(tmp_path / "b"), "--resume", "--max-steps", "8", "--json"]
    resumed = final(resume)
    assert resumed["steps"] == 8
    assert resumed["val_loss"] == straight["val_loss"]


def test_a_character_the_char_vocabulary_lacks_names_the_record():
    tok = _char_tokenizer([TWO_TURNS])
    other = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Zap!"}]
    with pytest.raises(DataError, match="record 2 holds 'Z'.*replace or drop"):
        encode_conversations([TWO_TURNS, other], tok, CHATML)
