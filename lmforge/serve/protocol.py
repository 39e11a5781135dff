"""OpenAI's wire format: request bodies checked into SamplingParams, response and chunk objects,
and the error shape `{"error": {"message", "type", "param", "code"}}`.

Nothing here touches HTTP or the engine thread: every function takes plain dicts and returns plain
dicts, so the rules of the API (ranges, defaults, choice numbering) are tested without a server.
Unknown fields are ignored, as OpenAI does; a known field of the wrong type or range is an
APIError(400) naming it in `param`.
"""

import json
import math
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.generation.engine import SamplingParams, TokenLogprob
from lmforge.generation.text import encode_prompt, text_options
from lmforge.tokenizers.chat import ChatTemplate, messages_to_ids

MAX_N = 4
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs
MAX_COMPLETION_LOGPROBS = 5  # completions' integer logprobs
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error a client gets as `{"error": {...}}` with HTTP `status`."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code=None, headers=None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(
            self.message, ERROR_TYPES.get(self.status, "error"), self.param, self.code
        )


def error_body(message: str, type: str, param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


# ---------------------------------------------------------------- field checks


def _number(body, name, default, lo, hi, integer=False, lo_open=False):
    """body[name] (None or absent: default) as a number in [lo, hi] ((lo, hi] when lo_open)."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        what = "an integer" if integer else "a number"
        raise _bad(name, f"{name} must be {what}, got {json.dumps(value)}")
    above_lo = value > lo if lo_open else value >= lo
    if not above_lo or (hi is not None and value > hi):
        low = f"> {lo}" if lo_open else f">= {lo}"
        span = f"{low} and <= {hi}" if hi is not None else low
        raise _bad(name, f"{name}={value} is out of range: it must be {span}")
    return value


def _boolean(body, name, default=False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, f"{name} must be true or false, got {json.dumps(value)}")
    return value


def _stop(body) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "stop must be a string or a list of strings")
    if len(stop) > MAX_STOP:
        raise _bad("stop", f"stop has {len(stop)} strings; give at most {MAX_STOP}")
    return [s for s in stop if s]


def _max_tokens(body, limit: int) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = _number(body, name, None, 1, limit, integer=True)
        if value is not None:
            return value
    return None


# ---------------------------------------------------------------- requests


@dataclass
class Limits:
    """What the server allows: `context` is the model's max_seq_len or the server's smaller
    --max-len (None: an RNN, no limit)."""

    max_tokens: int
    context: int | None
    max_sequences: int  # prompts x n one request may start (slots + queue)
    context_name: str = "the model's context"  # what `context` is, in error messages


@dataclass
class GenerationRequest:
    """A checked request: one SamplingParams per choice, choice i reading prompts[i // n]."""

    chat: bool
    model: str | None
    prompts: list[list[int]]
    params: list[SamplingParams]
    n: int
    stream: bool = False
    include_usage: bool = False
    echo_offsets: list[int] = field(default_factory=list)  # len(prompt text), for text_offset

    def prompt_of(self, index: int) -> list[int]:
        return self.prompts[index // self.n]


def parse_completion(body, tokenizer, limits: Limits) -> GenerationRequest:
    """Check a /v1/completions body: `prompt` is a string, a list of strings, a list of token
    ids or a list of such lists; choice `i * n + j` is sample j of prompt i."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("prompt", "prompt must be a string, a list of strings or of token id lists")
    prompts, lengths = [], []
    for p in prompt:
        if isinstance(p, str):
            prompts.append(_encode(lambda p=p: encode_prompt(tokenizer, p), "prompt"))
            lengths.append(len(p))
        elif _is_ids(p) and p:
            if not all(0 <= t < tokenizer.vocab_size for t in p):
                raise _bad("prompt", f"prompt has token ids outside 0..{tokenizer.vocab_size - 1}")
            prompts.append(list(p))
            lengths.append(len(tokenizer.decode(p)))
        else:
            raise _bad("prompt", "prompt must be a string, a list of strings or of token id lists")
    logprobs = _number(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS, integer=True)
    request = _request(body, tokenizer, limits, prompts, False, logprobs, None)
    request.echo_offsets = lengths
    return request


def parse_chat(body, tokenizer, template: ChatTemplate, limits: Limits) -> GenerationRequest:
    """Check a /v1/chat/completions body; content may be a string or a list of text parts."""
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "messages must be a non-empty list of {role, content} objects")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad("messages", f"messages[{i}] must be an object with role and content")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise _bad("messages", f"messages[{i}].content: only text parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        plain.append({"role": m.get("role"), "content": "" if content is None else content})
    ids = _encode(lambda: messages_to_ids(tokenizer, plain, template), "messages")
    want_logprobs = _boolean(body, "logprobs")
    top = _number(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    if top is not None and not want_logprobs:
        raise _bad("top_logprobs", "top_logprobs needs logprobs: true")
    logprobs = (top or 0) if want_logprobs else None
    return _request(body, tokenizer, limits, [ids], True, logprobs, template)


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise _bad(None, "the request body must be a JSON object")
    return body


def _is_ids(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _encode(encode, param: str) -> list[int]:
    try:
        return encode()
    except LmforgeError as e:
        raise _bad(param, str(e)) from None


def _request(body, tokenizer, limits, prompts, chat, logprobs, template) -> GenerationRequest:
    """The request of a checked body; a chat reply also ends where `template` says."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "model must be a string")
    n = _number(body, "n", 1, 1, MAX_N, integer=True)
    if len(prompts) * n > limits.max_sequences:
        raise _bad(
            "n",
            f"{len(prompts)} prompts x n={n} is more sequences than the server runs at once "
            f"({limits.max_sequences}); send fewer prompts or a smaller n",
        )
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", "stream_options must be an object")
    if options is not None and not stream:
        raise _bad("stream_options", "stream_options is only allowed when stream is true")
    include_usage = _boolean(options or {}, "include_usage")
    requested = _max_tokens(body, limits.max_tokens)
    seed = _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True)
    top_k = _number(body, "top_k", None, -1, None, integer=True)
    sampling = dict(
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", None, 0, 1, lo_open=True),
        top_k=None if top_k in (None, 0, -1) else top_k,  # vLLM's -1 (and 0) mean off
        min_p=_number(body, "min_p", None, 0, 1),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0, None, lo_open=True),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2, 2),
        stop=[*_stop(body), *(template.stop if template else ())],
        stop_token_ids=(
            *text_options(tokenizer, None, {})[1],
            *(template.stop_ids(tokenizer) if template else ()),
        ),
        logprobs=logprobs,
    )
    param = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    params = []
    for i, prompt in enumerate(prompts):
        max_new = _room(prompt, requested, limits, chat, "messages" if chat else "prompt", param)
        for j in range(n):
            index = i * n + j
            choice_seed = None if seed is None else seed + index
            params.append(SamplingParams(max_new_tokens=max_new, seed=choice_seed, **sampling))
    return GenerationRequest(chat, model, prompts, params, n, stream, include_usage)


def _room(prompt, requested, limits: Limits, chat: bool, prompt_param: str, param: str) -> int:
    """max_new_tokens of one prompt: the requested number when prompt + it fits the context;
    without a request, OpenAI's defaults (16 for completions, the room left for chat)."""
    context = limits.context
    if context is not None and len(prompt) >= context:
        raise _bad(
            prompt_param,
            f"the prompt has {len(prompt)} tokens but {limits.context_name} is {context} tokens; "
            "shorten the prompt",
        )
    room = limits.max_tokens if context is None else min(limits.max_tokens, context - len(prompt))
    if requested is None:
        return room if chat else min(DEFAULT_COMPLETION_TOKENS, room)
    if context is not None and len(prompt) + requested > context:
        raise _bad(
            param,
            f"the prompt has {len(prompt)} tokens and {param} is {requested}: "
            f"{len(prompt) + requested} tokens is over {limits.context_name} of {context}; "
            f"ask for at most {context - len(prompt)} tokens or shorten the prompt",
        )
    return requested


# ---------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_text(tokenizer, token: int) -> str:
    """A token's own text (byte-level pieces of a character show as U+FFFD)."""
    return tokenizer.decode([token])


def chat_logprobs(tokenizer, logprobs: list[TokenLogprob]) -> dict:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}], ...}."""

    def entry(token, logprob):
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [
        {**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
        for lp in logprobs
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer, logprobs: list[TokenLogprob], offset: int) -> dict:
    """OpenAI's completions `logprobs`: parallel lists; text_offset counts characters from the
    start of the prompt (`offset` = where this piece begins)."""
    tokens = [token_text(tokenizer, lp.token) for lp in logprobs]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{token_text(tokenizer, t): v for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def completion_object(request_id: str, created: int, model: str, choices, **extra) -> dict:
    """A `text_completion` object; streamed chunks have the same name (OpenAI's way). `extra`:
    `usage` (a response always has it; a chunk only when the client asked for usage)."""
    body = {"id": request_id, "object": "text_completion", "created": created, "model": model}
    return {**body, "choices": choices, **extra}


def chat_object(request_id: str, created: int, model: str, choices, chunk=False, **extra) -> dict:
    """A `chat.completion` object, or a `chat.completion.chunk`; `extra` as completion_object's."""
    body = {
        "id": request_id,
        "object": "chat.completion.chunk" if chunk else "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }
    return {**body, "choices": choices, **extra}


def sse(payload) -> str:
    """One Server-Sent Event as OpenAI sends it: `data: {json}\\n\\n` (or `data: [DONE]`)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"
