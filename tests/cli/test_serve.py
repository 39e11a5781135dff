"""`lmforge serve` from the command line: bad flags are one error line (exit 2), a run that
cannot load stops the server with its error, and SIGTERM shuts a real server down with exit 0
and no traceback."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli.test_train import _error  # one line, exit 2, no traceback

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
        (["--slots", "0"], "--slots 0 must be >= 1"),
        (["--max-len", "0"], "--max-len 0 must be >= 1"),
        (["--port", "70000"], "--port 70000 must be between 0 and 65535"),
        (["--max-token-limit", "5"], "did you mean --max-tokens-limit?"),
    ],
)
def test_bad_flags_are_one_line_errors(serve_run, capsys, flags, message):
    err = _error(capsys, ["serve", str(serve_run), *flags])
    assert message in err, err


def test_a_missing_run_fails_before_listening(tmp_path, capsys):
    err = _error(capsys, ["serve", str(tmp_path / "nope"), "--port", "0"])
    assert "does not exist" in err


def test_a_run_that_cannot_load_stops_the_server_with_its_error(tmp_path, capsys):
    (tmp_path / "broken").mkdir()  # a folder with no config.json: the load fails after listening
    err = _error(capsys, ["serve", str(tmp_path / "broken"), "--port", "0"])
    assert "config.json" in err


def _wait_for_line(stream, needle, seconds=60):
    deadline = time.monotonic() + seconds
    lines = []
    while time.monotonic() < deadline:
        line = stream.readline()
        lines.append(line)
        if needle in line:
            return line, lines
    raise AssertionError(f"no {needle!r} in {lines}")


def test_sigterm_shuts_a_real_server_down_cleanly(serve_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "lmforge", "serve", str(serve_run), "--port", "0", "--slots", "2"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line, _ = _wait_for_line(proc.stderr, "listening on http://")
        url = line.split("listening on ")[1].strip()
        deadline = time.monotonic() + 60
        while True:  # 503 while loading, then 200
            try:
                if urllib.request.urlopen(url + "/health", timeout=5).status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "the model never loaded"
                time.sleep(0.1)
        body = json.dumps({"prompt": "The wine", "max_tokens": 3}).encode()
        request = urllib.request.Request(
            url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert answer["usage"]["completion_tokens"] >= 1
        body = json.dumps({"prompt": "The wine", "max_tokens": 500, "stream": True}).encode()
        request = urllib.request.Request(
            url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        stream = urllib.request.urlopen(request, timeout=30)
        assert stream.readline().startswith(b"data: {")  # a stream is running
        proc.send_signal(signal.SIGTERM)
        rest = stream.read().decode()  # it finishes, or is cancelled after 2 s: never cut off
        assert rest.endswith("data: [DONE]\n\n")
        if '"error"' in rest:
            assert "shutting down" in rest
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "POST /v1/completions 200" in err


def test_cors_origins_come_after_one_flag_or_several():
    from lmforge.cli import options
    from lmforge.cli.main import _parse
    from lmforge.cli.serve_cmd import ServeConfig

    argv = ["serve", "run", "--cors-origin", "http://a", "http://b", "--cors-origin", "http://c"]
    cfg = options.from_args(_parse(argv), ServeConfig)
    assert cfg.cors_origin == ["http://a", "http://b", "http://c"]
