"""The playground (GET /) in a real browser: Debian's Chromium, headless, driven by Playwright.

The server runs in this process on a free loopback port (`running_server`) with a tiny random GPT
whose end-of-text token never comes, so a stream runs until max_tokens or Stop. Each page fails
its test on any console error or uncaught exception. LMFORGE_SCREENSHOT_DIR=docs writes the
README's screenshot (of LMFORGE_SCREENSHOT_RUN, a readable model, if set) instead of to tmp_path.
"""

import dataclasses
import math
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from lmforge.api import load_tokenizer
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.serve.app import create_app, running_server
from lmforge.training.checkpoint import save_weights, write_config

# root needs --no-sandbox; the rest keep Chromium off the network (this one has none)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LONG = 4000  # tokens: a stream that outlasts several observations on any machine


@pytest.fixture(scope="module")
def browser():
    """Chromium (the system's, no Playwright download); fails, never skips, when missing."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("the playground tests need Playwright: pip install -e '.[dev]'", pytrace=False)
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        pytest.fail("the playground tests need Chromium: apt-get install chromium", pytrace=False)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def play_run(serve_run, tmp_path_factory) -> Path:
    """serve_run's byte-level BPE with a 2 x 64 GPT of context 4096 that writes printable text
    only (a lone byte of a UTF-8 character would print as U+FFFD) and never ends by itself."""
    folder = tmp_path_factory.mktemp("play")
    shutil.copytree(serve_run / "tokenizer", folder / "tokenizer")
    tok = load_tokenizer(folder)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, max_seq_len=4096, embed_dim=64, num_heads=2, num_layers=2,
        ffn_dim=128, tie_embeddings=False,
    )  # fmt: skip
    model = GPTCausalLM(config).eval()
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    unprintable = [i for i, t in enumerate(texts) if "\ufffd" in t or not t.isprintable()]
    with torch.no_grad():
        model.head.weight.normal_(std=0.25)  # a few likely tokens: the top-5 shows a spread
        model.head.bias[[tok.eos_id, *unprintable]] = -1e4
    write_config(folder, {"family": "gpt", "model": dataclasses.asdict(config)})
    save_weights(model, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def server(play_run):
    with running_server(create_app(play_run, slots=2)) as url:
        yield url


@pytest.fixture
def page(browser, server):
    """A fresh page on the playground; the test fails on console errors or page errors."""
    context = browser.new_context(viewport={"width": 1200, "height": 720})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(server + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    context.close()
    assert errors == [], f"console errors: {errors}"


def output_length(page) -> int:
    return page.evaluate("document.querySelector('#output').textContent.length")


def running_sequences(url: str) -> float:
    """The server's lmforge_requests_running gauge."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "lmforge_requests_running":
            return family.samples[0].value
    raise AssertionError("/metrics has no lmforge_requests_running")


def wait_until(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def generate(page, prompt: str = "ROMEO:", **fields) -> dict:
    """Fill the settings, click Generate and return the JSON body the page posted."""
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))
    page.fill("#prompt", prompt)
    with page.expect_request(re.compile(r"/v1/(chat/)?completions$")) as sent:
        page.click("#generate")
    return sent.value.post_data_json


def finish(page) -> str:
    page.wait_for_selector("#generate:enabled", timeout=30_000)
    return page.inner_text("#finish")


def test_text_streams_in_and_stop_freezes_it_and_frees_the_slot(page, server):
    generate(page, max_tokens=LONG, seed=1)
    lengths = [output_length(page)]
    wait_until(lambda: lengths.append(output_length(page)) or len(set(lengths)) >= 4)
    assert lengths == sorted(lengths)  # it only grows
    assert page.is_enabled("#stop")

    page.click("#stop")
    assert finish(page) == "stopped"
    frozen = output_length(page)
    time.sleep(0.5)
    assert output_length(page) == frozen
    assert page.evaluate("document.querySelectorAll('#output .tok').length") < LONG
    wait_until(lambda: running_sequences(server) == 0, timeout=10)
    # the live figures are numbers
    assert re.fullmatch(r"\d+ ms", page.inner_text("#ttft"))
    assert float(page.inner_text("#tps")) > 0


def test_the_text_follows_only_a_reader_at_the_bottom(page, server):
    page.set_viewport_size({"width": 900, "height": 420})  # a short box: it overflows soon
    generate(page, max_tokens=LONG, seed=5)
    overflow = "(e => e.scrollHeight - e.clientHeight)(document.querySelector('#output'))"
    wait_until(lambda: page.evaluate(overflow) > 100)
    assert page.evaluate(f"{overflow} - document.querySelector('#output').scrollTop") < 30

    page.evaluate("document.querySelector('#output').scrollTop = 0")  # the reader scrolls up
    grown = output_length(page)
    wait_until(lambda: output_length(page) > grown + 50)
    assert page.evaluate("document.querySelector('#output').scrollTop") == 0
    page.click("#stop")
    assert finish(page) == "stopped"


def test_slider_and_field_values_reach_the_request(page):
    page.fill("#temperature", "0.35")  # range inputs take fill() as a value
    page.fill("#top_p", "0.9")
    page.fill("#stop_strings", "zzz\n\\n\\n")
    assert page.inner_text('output[for="temperature"]') == "0.35"
    body = generate(page, top_k=40, max_tokens=12, seed=7)
    assert body["temperature"] == 0.35
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["max_tokens"] == 12
    assert body["seed"] == 7
    assert body["stop"] == ["zzz", "\n\n"]
    assert body["stream"] is True and body["logprobs"] == 5 and body["prompt"] == "ROMEO:"
    assert finish(page) in ("finished: length", "finished: stop")


def hover_a_token(page, index: int = 2):
    """Hover a generated token with visible text (the index-th; -1 the last); returns the
    tooltip's probabilities (%)."""
    page.locator("#output .tok", has_text=re.compile(r"\w")).nth(index).hover()
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    rows = tip.locator(".row").all_inner_texts()
    return [float(re.search(r"([\d.]+)%$", row).group(1)) for row in rows]


def test_hovering_a_token_shows_its_top_5_alternatives(page, tmp_path):
    generate(page, max_tokens=40, seed=3)
    finish(page)
    probs = hover_a_token(page)
    assert len(probs) == 5
    assert probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 100.5
    page.mouse.move(5, 5)
    page.locator("#tooltip").wait_for(state="hidden")


def test_chat_mode_streams_replies_and_sends_the_history(page):
    page.check('input[value="chat"]')
    first = generate(page, "Who is there?", max_tokens=8, seed=2)
    assert first["messages"] == [{"role": "user", "content": "Who is there?"}]
    assert first["logprobs"] is True and first["top_logprobs"] == 5
    finish(page)
    reply = page.inner_text("#output .msg.assistant")
    assert reply
    second = generate(page, "Speak again.", max_tokens=8, seed=2)
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == reply
    finish(page)
    assert page.locator("#output .msg.assistant .tok").count() > 0


def test_an_error_is_shown_with_the_servers_message(page):
    generate(page, max_tokens=4096)  # the prompt and these are over the context of 4096
    finish(page)
    error = page.inner_text("#error")
    assert error.startswith("HTTP 400: ") and "max_tokens" in error
    page.errors[:] = [e for e in page.errors if "status of 400" not in e]  # Chromium's own line


def test_an_api_key_is_sent_as_a_bearer_token(browser, play_run):
    with running_server(create_app(play_run, slots=1, api_key="sesame")) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.locator("#error").wait_for(state="visible")  # /v1/models refused without it
        assert page.inner_text("#error").startswith("HTTP 401")
        page.fill("#api_key", "sesame")
        page.press("#api_key", "Tab")  # change event: models are fetched again
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert page.is_hidden("#error")
        with page.expect_request(re.compile(r"/v1/completions$")) as sent:
            page.click("#generate")
        assert sent.value.headers["authorization"] == "Bearer sesame"
        finish(page)
        page.close()


def test_screenshot_of_a_stream_with_a_hovered_token(browser, play_run, tmp_path):
    """The README's picture: streamed text with a token's alternatives showing."""
    out = Path(os.environ.get("LMFORGE_SCREENSHOT_DIR") or tmp_path)
    app = create_app(os.environ.get("LMFORGE_SCREENSHOT_RUN") or play_run)
    with running_server(app) as url:
        context = app.state.lmforge.limits.context or 1000
        page = browser.new_page(viewport={"width": 1100, "height": 560})
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        generate(page, "ROMEO:", max_tokens=min(300, context - 8), seed=4, temperature=0.8)
        finish(page)
        probs = hover_a_token(page, -1)  # the tooltip opens below the text
        assert len(probs) == 5 and all(math.isfinite(p) for p in probs)
        page.screenshot(path=out / "playground.png")
        page.close()
    assert (out / "playground.png").stat().st_size > 10_000
