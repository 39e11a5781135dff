"""Request checking without a server: defaults, ranges named by `param`, choice numbering and
seeds, the context check naming both numbers, and OpenAI's response shapes."""

import pytest

from lmforge.serve import protocol
from lmforge.serve.protocol import APIError, Limits
from lmforge.tokenizers.chat import load_chat_template

LIMITS = Limits(max_tokens=100, context=64, max_sequences=8)


def _bad(parse, body) -> APIError:
    with pytest.raises(APIError) as e:
        parse(body)
    assert e.value.status == 400
    return e.value


def test_defaults_follow_openai(loaded):
    tok = loaded.tokenizer
    req = protocol.parse_completion({"prompt": "The wine"}, tok, LIMITS)
    (params,) = req.params
    assert params.max_new_tokens == 16 and params.temperature == 1.0 and params.seed is None
    assert params.stop_token_ids == (tok.eos_id,) and params.logprobs is None
    assert not req.stream and not req.include_usage
    chat = protocol.parse_chat(
        {"messages": [{"role": "user", "content": "Hi"}]}, tok, load_chat_template(tok), LIMITS
    )
    assert chat.params[0].max_new_tokens == 64 - len(chat.prompts[0])  # the room left
    assert "<|im_end|>" in chat.params[0].stop


def test_choices_are_prompt_major_with_seed_plus_index(loaded):
    body = {"prompt": ["The wine", [5, 6, 7]], "n": 3, "seed": 10, "max_tokens": 4}
    req = protocol.parse_completion(body, loaded.tokenizer, LIMITS)
    assert [p.seed for p in req.params] == [10, 11, 12, 13, 14, 15]
    assert [req.prompt_of(i) for i in range(6)][3:] == [[5, 6, 7]] * 3
    assert req.echo_offsets == [len("The wine"), len(loaded.tokenizer.decode([5, 6, 7]))]


def test_the_context_check_names_both_numbers(loaded):
    tok = loaded.tokenizer
    prompt = [5] * 60
    e = _bad(
        lambda b: protocol.parse_completion(b, tok, LIMITS), {"prompt": prompt, "max_tokens": 5}
    )
    assert e.param == "max_tokens" and "60 tokens" in e.message and "is 5" in e.message
    assert "context of 64" in e.message and "at most 4" in e.message
    e = _bad(lambda b: protocol.parse_completion(b, tok, LIMITS), {"prompt": [5] * 64})
    assert e.param == "prompt"
    rnn = Limits(max_tokens=100, context=None, max_sequences=8)  # no context: only the limit
    assert protocol.parse_completion({"prompt": prompt, "max_tokens": 100}, tok, rnn).params


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", True, "temperature must be a number, got true"),
        ("top_p", 1.5, "top_p=1.5 is out of range: it must be > 0 and <= 1"),
        ("n", 0, "n=0 is out of range"),
        ("max_tokens", 101, "max_tokens=101 is out of range: it must be >= 1 and <= 100"),
        ("frequency_penalty", 2.5, "frequency_penalty=2.5 is out of range"),
        ("seed", 1.5, "seed must be an integer"),
        ("stop", [1], "stop must be a string or a list of strings"),
        ("min_p", -0.1, "min_p=-0.1 is out of range"),
        ("repetition_penalty", 0, "repetition_penalty=0 is out of range: it must be > 0"),
        ("model", 3, "model must be a string"),
    ],
)
def test_wrong_types_and_ranges_name_the_param(loaded, field, value, message):
    parse = lambda b: protocol.parse_completion(b, loaded.tokenizer, LIMITS)  # noqa: E731
    e = _bad(parse, {"prompt": "x", field: value})
    assert e.param == field and message in e.message
    assert e.body() == {
        "error": {
            "message": e.message,
            "type": "invalid_request_error",
            "param": field,
            "code": None,
        }
    }


def test_chat_logprob_rules_and_text_parts(loaded):
    tok = loaded.tokenizer
    template = load_chat_template(tok)
    parse = lambda b: protocol.parse_chat(b, tok, template, LIMITS)  # noqa: E731
    user = [
        {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}
    ]
    req = parse({"messages": user, "logprobs": True, "top_logprobs": 3})
    assert req.params[0].logprobs == 3
    plain = parse({"messages": [{"role": "user", "content": "Hi"}]})
    assert req.prompts == plain.prompts  # text parts are joined
    assert _bad(parse, {"messages": user, "top_logprobs": 3}).param == "top_logprobs"
    assert _bad(parse, {"messages": user, "top_logprobs": 21, "logprobs": True}).param == (
        "top_logprobs"
    )
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]
    assert _bad(parse, {"messages": image}).param == "messages"


def test_too_many_sequences_is_a_400_on_n(loaded):
    body = {"prompt": ["a", "b", "c"], "n": 3}
    e = _bad(lambda b: protocol.parse_completion(b, loaded.tokenizer, LIMITS), body)
    assert e.param == "n" and "(8)" in e.message


def test_completion_logprobs_offsets_count_characters(loaded):
    from lmforge.generation.engine import TokenLogprob

    tok = loaded.tokenizer
    ids = tok.encode("red and dry")
    lps = [TokenLogprob(t, -0.5, [(t, -0.5)]) for t in ids]
    out = protocol.completion_logprobs(tok, lps, offset=3)
    assert "".join(out["tokens"]) == "red and dry"
    assert out["text_offset"][0] == 3
    assert [b - a for a, b in zip(out["text_offset"], out["text_offset"][1:])] == [
        len(t) for t in out["tokens"][:-1]
    ]
    assert out["top_logprobs"][0] == {out["tokens"][0]: -0.5}
