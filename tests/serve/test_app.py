"""The server through the official `openai` client and raw HTTP: answers equal the engine run
directly, OpenAI's stream format, every error status with its body, 8 streams at once, a
disconnect freeing its slot, 429 when the queue is full, and one log line per request."""

import http.client
import json
import re
import threading
import time
from urllib.parse import urlparse

import openai
import pytest

from lmforge.serve import app as serve_app
from lmforge.serve import protocol
from lmforge.serve.app import create_app, running_server
from lmforge.tokenizers.chat import load_chat_template, messages_to_ids
from tests.serve.conftest import alone

MODEL = "tiny"  # the served name (create_app's model_name)
PROMPTS = [
    "The wine",
    "A bright white",
    "notes of cherry",
    "red and dry",
    "oak",
    "crisp",
    "Th",
    "A",
]


@pytest.fixture(scope="module")
def server(serve_run):
    app = create_app(serve_run, slots=8, max_queue=8, model_name=MODEL)
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def _raw(url, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one plain HTTP request."""
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return out


def _metric(url, name) -> float:
    text = _raw(url, "GET", "/metrics")[2].decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def _ids(loaded, text):
    return loaded.tokenizer.encode(text)


# ---------------------------------------------------------------- answers


def test_greedy_completions_equal_the_engine_alone_streamed_or_not(server, client, loaded):
    listed = client.models.list().data
    assert [m.id for m in listed] == [MODEL]
    got = client.completions.create(model=MODEL, prompt=PROMPTS[:3], max_tokens=12, temperature=0)
    expected = [
        alone(loaded, _ids(loaded, p), max_new_tokens=12, temperature=0) for p in PROMPTS[:3]
    ]
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert [c.text for c in got.choices] == [text for text, _ in expected]
    assert got.object == "text_completion" and got.model == MODEL
    prompt_tokens = sum(len(_ids(loaded, p)) for p in PROMPTS[:3])
    completion_tokens = sum(len(h.tokens) for _, h in expected)
    assert got.usage.prompt_tokens == prompt_tokens
    assert got.usage.completion_tokens == completion_tokens
    assert got.usage.total_tokens == prompt_tokens + completion_tokens
    stream = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected[0][0]
    assert chunks[-1].choices[0].finish_reason == expected[0][1].finish_reason
    assert all(c.usage is None for c in chunks)  # usage only when asked for


def test_chat_streamed_and_not_equal_the_engine_on_the_template(server, client, loaded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Red?"}]
    template = load_chat_template(loaded.tokenizer, loaded.folder)
    assert template.name == "chatml"  # a byte-level BPE encodes it
    ids = messages_to_ids(loaded.tokenizer, messages, template)
    text, handle = alone(loaded, ids, max_new_tokens=10, temperature=0, stop=template.stop)
    got = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, temperature=0
    )
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == text
    assert got.usage.prompt_tokens == len(ids)
    assert got.usage.completion_tokens == len(handle.tokens)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == text
    assert chunks[-2].choices[0].finish_reason == handle.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(handle.tokens)


def test_the_stream_is_server_sent_events_as_openai_sends_them(server):
    body = {"prompt": "The wine", "max_tokens": 4, "temperature": 0, "stream": True}
    status, headers, raw = _raw(server[0], "POST", "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"
    assert all(p["choices"][0]["finish_reason"] is None for p in payloads[:-1])
    assert all("usage" not in p for p in payloads)


def test_n_and_seed_give_the_same_texts_and_choice_i_uses_seed_plus_i(client):
    kw = dict(prompt="The wine", max_tokens=8, temperature=1.0, n=3, seed=7)
    first = client.completions.create(model=MODEL, **kw)
    again = client.completions.create(model=MODEL, **kw)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] and len(set(texts)) > 1
    third = client.completions.create(model=MODEL, **{**kw, "n": 1, "seed": 9})
    assert third.choices[0].text == texts[2]
    chat = dict(messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=2, seed=3)
    assert [
        c.message.content for c in client.chat.completions.create(model=MODEL, **chat).choices
    ] == [c.message.content for c in client.chat.completions.create(model=MODEL, **chat).choices]


def test_prompt_lists_with_n_number_choices_prompt_major(client):
    got = client.completions.create(
        model=MODEL, prompt=["The wine", "oak"], max_tokens=5, n=2, seed=1, temperature=0
    )
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    texts = [c.text for c in got.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: each prompt's two agree


def test_stop_strings_cut_the_text(client, loaded):
    full, _ = alone(loaded, _ids(loaded, "The wine"), max_new_tokens=20, temperature=0)
    stop = full[5:7]
    assert stop and full.index(stop) >= 1
    got = client.completions.create(
        model=MODEL, prompt="The wine", max_tokens=20, temperature=0, stop=[stop]
    )
    assert got.choices[0].text == full[: full.index(stop)]
    assert got.choices[0].finish_reason == "stop"


def test_logprobs_match_the_engine(client, loaded):
    _, handle = alone(loaded, _ids(loaded, "The wine"), max_new_tokens=6, temperature=0, logprobs=2)
    got = client.completions.create(
        model=MODEL, prompt="The wine", max_tokens=6, temperature=0, logprobs=2
    )
    lp = got.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([x.logprob for x in handle.logprobs], abs=1e-4)
    assert lp.tokens == [loaded.tokenizer.decode([t]) for t in handle.tokens]
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in lp.top_logprobs)
    assert lp.text_offset[0] == len("The wine")
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)  # greedy
        assert entry.bytes == list(entry.token.encode())


def test_penalties_and_extra_sampling_fields_reach_the_engine(client, loaded):
    ids = _ids(loaded, "The wine")
    kw = dict(max_new_tokens=12, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    expected, _ = alone(loaded, ids, **kw)
    plain, _ = alone(loaded, ids, max_new_tokens=12, temperature=0)
    assert expected != plain  # the penalties change the greedy text of this model
    got = client.completions.create(model=MODEL,
        prompt="The wine", max_tokens=12, temperature=0, frequency_penalty=2.0,
        presence_penalty=2.0, extra_body={"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.0},
    )  # fmt: skip
    assert got.choices[0].text == expected


def test_unknown_fields_are_ignored(server):
    body = {"prompt": "oak", "max_tokens": 2, "user": "me", "logit_bias": {}, "whatever": [1]}
    status, _, raw = _raw(server[0], "POST", "/v1/completions", body)
    assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] in ("length", "stop")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "presence_penalty": -3}, "presence_penalty"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_bad_completion_fields_are_400_naming_the_param(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, **body)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == param


def test_bad_chat_fields_are_400_naming_the_param(client):
    for body, param in (
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "extra_body": {"top_k": "3"}}, "top_k"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, **body)
        assert e.value.body["param"] == param, body


def test_a_prompt_over_the_context_is_a_400_naming_both_numbers(client, loaded):
    prompt = "The wine is red. " * 40
    n = len(_ids(loaded, prompt))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=512 - n + 1)
    message = e.value.body["message"]
    assert f"{n} tokens" in message and str(512 - n + 1) in message and "512" in message


def test_malformed_json_unknown_paths_and_models_and_large_bodies(server, client):
    url = server[0]
    status, _, raw = _raw(url, "POST", "/v1/completions", b'{"prompt": "x",')
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = _raw(url, "GET", "/v1/nothing")
    assert status == 404 and json.loads(raw)["error"]["message"] == "Invalid URL (GET /v1/nothing)"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    big = {"prompt": "x" * (2**20 + 10)}
    status, _, raw = _raw(url, "POST", "/v1/completions", big)
    assert status == 413 and set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}


def test_an_api_key_is_required_on_v1_but_not_on_health(serve_run):
    with running_server(create_app(serve_run, slots=1, api_key="s3cret")) as url:
        for key in ("wrong", None):
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            status, _, raw = _raw(url, "GET", "/v1/models", headers=headers)
            assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope").models.list()
        ok = openai.OpenAI(base_url=url + "/v1", api_key="s3cret")
        assert ok.completions.create(model=str(serve_run), prompt="oak", max_tokens=2).choices
        assert _raw(url, "GET", "/health")[0] == 200


def test_503_while_the_model_loads(serve_run, monkeypatch):
    gate = threading.Event()
    load = serve_app.ServerState.load
    monkeypatch.setattr(serve_app.ServerState, "load", lambda self: (gate.wait(30), load(self)))
    app = create_app(serve_run, slots=1)
    with running_server(app, wait_ready=False) as url:
        status, headers, raw = _raw(url, "GET", "/health")
        assert status == 503 and headers["retry-after"] == "1"
        status, _, raw = _raw(url, "POST", "/v1/completions", {"prompt": "x"})
        assert status == 503 and json.loads(raw)["error"]["type"] == "service_unavailable"
        gate.set()
        assert app.state.lmforge.ready.wait(30)
        assert _raw(url, "GET", "/health")[0] == 200


def test_a_failing_route_is_a_500_in_openai_shape_logged_without_traceback(
    server, monkeypatch, caplog
):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(protocol, "parse_completion", broken)
    with caplog.at_level("INFO", logger="lmforge.serve"):
        status, _, raw = _raw(server[0], "POST", "/v1/completions", {"prompt": "x"})
    assert status == 500 and json.loads(raw)["error"]["type"] == "server_error"
    assert "boom" not in raw.decode()
    assert "RuntimeError: boom" in caplog.text and "Traceback" not in caplog.text


def test_one_log_line_per_request_with_tokens_and_speed(server, caplog, loaded):
    prompt_tokens = len(_ids(loaded, "oak oak"))
    pattern = (
        rf"POST /v1/completions 200 prompt_tokens={prompt_tokens} completion_tokens=3 "
        r"ttft=[\d.]+s [\d.]+ tok/s [\d.]+s"
    )

    def lines():  # the line comes once the response is sent, maybe after the client has it
        return [r.getMessage() for r in caplog.records if re.fullmatch(pattern, r.getMessage())]

    with caplog.at_level("INFO", logger="lmforge.serve"):
        body = {"prompt": "oak oak", "max_tokens": 3, "stop": ["never in this text"]}
        assert _raw(server[0], "POST", "/v1/completions", body)[0] == 200
        _wait_for(lambda: lines())
        time.sleep(0.1)
        assert len(lines()) == 1


# ---------------------------------------------------------------- concurrency


def _stream_text(client, prompt, max_tokens, out, i):
    chunks = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
    )
    out[i] = "".join(c.choices[0].text for c in chunks)


def test_eight_streams_at_once_equal_their_texts_alone(client, loaded):
    out = [None] * 8
    threads = [
        threading.Thread(target=_stream_text, args=(client, p, 16, out, i))
        for i, p in enumerate(PROMPTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = [
        alone(loaded, _ids(loaded, p), max_new_tokens=16, temperature=0)[0] for p in PROMPTS
    ]
    assert out == expected


def _open_stream(url, max_tokens, prompt="The wine", read_first=True):
    """A raw streaming request, its first event read unless told not to: (connection, response)."""
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    if not read_first:
        return conn, None
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")
    return conn, response


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_client_that_disconnects_frees_its_slot(server):
    url = server[0]
    _wait_for(lambda: _metric(url, "lmforge_requests_running") == 0)
    conn, _ = _open_stream(url, 500)
    _wait_for(lambda: _metric(url, "lmforge_requests_running") == 1)
    conn.close()
    _wait_for(lambda: _metric(url, "lmforge_requests_running") == 0)
    generated = _metric(url, "lmforge_tokens_generated_total")
    time.sleep(0.2)
    assert _metric(url, "lmforge_tokens_generated_total") == generated  # nothing runs on


def test_a_full_queue_gives_429_while_running_streams_finish(serve_run):
    with running_server(create_app(serve_run, slots=1, max_queue=1)) as url:
        first = _open_stream(url, 500)
        second = _open_stream(url, 5, prompt="oak", read_first=False)  # waits for the slot
        _wait_for(lambda: _metric(url, "lmforge_requests_waiting") == 1)
        status, headers, raw = _raw(url, "POST", "/v1/completions", {"prompt": "x"})
        assert status == 429 and headers["retry-after"] == "1"
        assert json.loads(raw)["error"]["type"] == "rate_limit_error"
        for conn, response in (first, second):
            rest = (response or conn.getresponse()).read().decode()
            assert rest.endswith("data: [DONE]\n\n") and '"error"' not in rest
            conn.close()
        assert _raw(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200


def test_a_non_streamed_request_whose_client_leaves_is_cancelled(server):
    url = server[0]
    _wait_for(lambda: _metric(url, "lmforge_requests_running") == 0)
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    body = json.dumps({"prompt": "The wine", "max_tokens": 500, "temperature": 0})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    _wait_for(lambda: _metric(url, "lmforge_requests_running") == 1)
    conn.close()
    _wait_for(lambda: _metric(url, "lmforge_requests_running") == 0)
    generated = _metric(url, "lmforge_tokens_generated_total")
    time.sleep(0.2)
    assert _metric(url, "lmforge_tokens_generated_total") == generated


def test_an_error_after_the_stream_started_is_an_error_event_before_done(serve_run):
    app = create_app(serve_run, slots=1)
    with running_server(app) as url:

        def broken():
            raise RuntimeError("the accelerator fell over")

        app.state.lmforge.worker.engine.step = broken
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
        status, _, raw = _raw(url, "POST", "/v1/chat/completions", body)
    events = raw.decode().split("\n\n")
    assert status == 200 and events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"]
    error = json.loads(events[-3].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "accelerator" not in error["message"]


def test_cors_origins_are_allowed_when_given(serve_run):
    app = create_app(serve_run, slots=1, api_key="k", cors_origins=["http://example.com"])
    with running_server(app) as url:
        preflight = {
            "Origin": "http://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        status, headers, _ = _raw(url, "OPTIONS", "/v1/completions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://example.com"
        auth = {"Origin": "http://example.com", "Authorization": "Bearer k"}
        status, headers, _ = _raw(url, "GET", "/v1/models", headers=auth)
        assert status == 200 and headers["access-control-allow-origin"] == "http://example.com"
        wrong = {"Origin": "http://example.com", "Authorization": "Bearer nope"}
        status, headers, _ = _raw(url, "GET", "/v1/models", headers=wrong)
        assert status == 401 and headers["access-control-allow-origin"] == "http://example.com"
        status, headers, _ = _raw(url, "GET", "/v1/models", headers={"Origin": "http://evil.com"})
        assert status == 401 and "access-control-allow-origin" not in headers


def test_int8_weights_serve_what_the_int8_engine_makes(serve_run):
    from lmforge.api import load_run

    int8 = load_run(serve_run, "cpu", quantize="int8")
    expected, _ = alone(int8, _ids(int8, "The wine"), max_new_tokens=8, temperature=0)
    with running_server(create_app(serve_run, slots=1, quantize="int8")) as url:
        body = {"prompt": "The wine", "max_tokens": 8, "temperature": 0}
        status, _, raw = _raw(url, "POST", "/v1/completions", body)
    assert status == 200 and json.loads(raw)["choices"][0]["text"] == expected


def test_max_len_serves_a_context_whose_full_slots_do_not_fit(serve_run, loaded, monkeypatch):
    """serve_run's context is 512 tokens. With free memory for one slot of 100 positions, the
    full context is refused at load (one line naming --slots and --max-len); max_len=64 serves,
    answers as the engine alone, and refuses a request that needs more than 64 tokens."""
    from lmforge.generation import engine as engine_module

    expected, _ = alone(loaded, _ids(loaded, "The wine"), max_new_tokens=8, temperature=0)
    budget = loaded.model.slot_bytes(1, 100)
    monkeypatch.setattr(engine_module, "available_memory_bytes", lambda: budget)
    refused = create_app(serve_run, slots=1).state.lmforge
    refused.load()
    assert refused.worker is None and "\n" not in refused.load_error
    assert re.fullmatch(
        r"1 slots of 512 positions need [\d.]+ GiB of cache but only [\d.]+ GiB is free; "
        r"pass --slots 1 or fewer or a smaller --max-len",
        refused.load_error,
    )
    app = create_app(serve_run, slots=1, max_len=64)
    with running_server(app) as url:
        assert app.state.lmforge.worker.engine.max_len == 64
        body = {"prompt": "The wine", "max_tokens": 8, "temperature": 0}
        status, _, raw = _raw(url, "POST", "/v1/completions", body)
        assert status == 200 and json.loads(raw)["choices"][0]["text"] == expected
        status, _, raw = _raw(url, "POST", "/v1/completions", body | {"max_tokens": 64})
        assert status == 400
        assert "over the server's --max-len of 64" in json.loads(raw)["error"]["message"]
