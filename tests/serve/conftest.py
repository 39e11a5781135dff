"""The served run (tests/conftest.py's serve_run) loaded directly, and decoding alone on the
engine: the reference every server answer is checked against."""

import pytest


@pytest.fixture(scope="session")
def loaded(serve_run):
    """The same run loaded directly: the reference the server's answers are checked against."""
    from lmforge.api import load_run

    return load_run(serve_run, "cpu")


def alone(loaded, prompt_ids, **params) -> tuple[str, list]:
    """(text, handle) of one request decoded alone on a fresh engine, stopping at eos as the
    server does."""
    from lmforge.generation.engine import Engine, SamplingParams

    tok = loaded.tokenizer
    engine = Engine(loaded.model, slots=1, tokenizer=tok)
    params.setdefault("stop_token_ids", (tok.eos_id,))
    handle = engine.submit(prompt_ids, SamplingParams(**params))
    engine.run()
    return handle.text, handle
