"""`lmforge chat`: piped JSON in, the engine's greedy reply out (text or one JSON line); the
terminal chat through a pseudo-terminal (/system, /reset, /save, /exit, Ctrl-C); history cut to
the context; bad input as one line and exit 2."""

import io
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.api import load_run
from lmforge.cli.main import main
from lmforge.generation.engine import Engine, SamplingParams
from lmforge.generation.text import text_options
from lmforge.tokenizers.chat import (
    ChatTemplate,
    fit_messages,
    load_chat_template,
    messages_to_ids,
    save_chat_template,
)

GREEDY = ["--temperature", "0", "--max-new-tokens", "12", "--threads", "1"]
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello wine"}]


def greedy_reply(run, messages, max_new_tokens=12, prompt_limit=None) -> tuple[str, list[int]]:
    """(the reply text, its tokens) that the Engine gives greedily for the chat prompt ids."""
    loaded = load_run(run)
    tok = loaded.tokenizer
    template = load_chat_template(tok, loaded.folder)
    _, ids = fit_messages(tok, messages, template, prompt_limit)
    engine = Engine(loaded.model, slots=1, tokenizer=tok, threads=1)
    stop_ids = (*text_options(tok, None, {})[1], *template.stop_ids(tok))
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0, stop=template.stop, stop_token_ids=stop_ids
    )
    handle = engine.submit(ids, params)
    list(handle)
    return handle.text, handle.tokens


def chat_piped(monkeypatch, capsys, run, stdin: str, *flags) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["chat", str(run), *GREEDY, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_piped_messages_get_the_engines_greedy_reply(serve_run, monkeypatch, capsys):
    code, out, _ = chat_piped(monkeypatch, capsys, serve_run, json.dumps(HELLO))
    expected, tokens = greedy_reply(serve_run, HELLO)
    assert code == 0 and out == expected + "\n" and expected
    wrapped = json.dumps({"messages": HELLO[1:]})  # the object form, the system from --system
    code, out, _ = chat_piped(monkeypatch, capsys, serve_run, wrapped, "--system", "Be brief.")
    assert code == 0 and out == expected + "\n"
    code, out, _ = chat_piped(monkeypatch, capsys, serve_run, json.dumps(HELLO), "--json")
    line = json.loads(out)
    assert code == 0 and len(out.splitlines()) == 1
    prompt = messages_to_ids(load_run(serve_run).tokenizer, HELLO)
    assert line == {
        "reply": expected,
        "finish_reason": "stop" if len(tokens) < 12 else "length",
        "prompt_tokens": len(prompt),
        "completion_tokens": len(tokens),
        "dropped_messages": 0,
    }


def test_a_long_history_is_cut_from_the_oldest_turns(serve_run, monkeypatch, capsys):
    long = "The wine is red and dry, with notes of cherry and oak. " * 3
    history = [HELLO[0]]
    for i in range(12):
        history.append({"role": "user", "content": f"{i} {long}"})
        history.append({"role": "assistant", "content": long})
    history.append(HELLO[1])
    flags = ["--json", "--max-new-tokens", "300"]  # the prompt keeps 512 - 256 tokens
    code, out, err = chat_piped(monkeypatch, capsys, serve_run, json.dumps(history), *flags)
    assert code == 0
    line = json.loads(out)
    assert line["dropped_messages"] > 0 and line["prompt_tokens"] <= 256
    assert f"the {line['dropped_messages']} oldest message(s) dropped" in err
    tok = load_run(serve_run).tokenizer
    kept, _ = fit_messages(tok, history, load_chat_template(tok), 256)
    assert kept[0] == HELLO[0] and kept[1]["role"] == "user" and kept[-1] == HELLO[1]
    assert len(kept) == len(history) - line["dropped_messages"]
    assert line["reply"] == greedy_reply(serve_run, history, 300, 256)[0]


@pytest.mark.parametrize(
    "stdin, message",
    [
        ("", "standard input is empty; pipe a JSON messages list"),
        ("[{]", "standard input is not JSON"),
        ('{"prompt": "x"}', 'has no "messages"'),
        ("[]", "the messages list is empty"),
        ('[{"role": "robot", "content": "x"}]', r"messages[0] must be {'role': one of system"),
        ('[{"role": "user", "content": 3}]', "messages[0] must be"),
    ],
)
def test_bad_piped_input_is_one_line(serve_run, monkeypatch, capsys, stdin, message):
    code, out, err = chat_piped(monkeypatch, capsys, serve_run, stdin)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("lmforge: error: ") and message in err


def test_a_missing_run_and_a_template_that_refuses(serve_run, tmp_path, monkeypatch, capsys):
    code, _, err = chat_piped(monkeypatch, capsys, tmp_path / "nope", json.dumps(HELLO))
    assert code == 2 and "does not exist" in err and len(err.splitlines()) == 1
    run = tmp_path / "run"
    shutil.copytree(serve_run, run)
    source = (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
        "{{ m.content }}{% endfor %}"
    )
    save_chat_template(run, ChatTemplate("jinja", source))
    code, out, err = chat_piped(monkeypatch, capsys, run, json.dumps(HELLO))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "refused the messages: Only user and assistant roles are supported!" in err
    code, out, _ = chat_piped(monkeypatch, capsys, run, json.dumps(HELLO[1:]))
    assert code == 0 and out == greedy_reply(run, HELLO[1:])[0] + "\n"


class Terminal:
    """`lmforge chat` on a pseudo-terminal: what it prints, read up to a marker."""

    def __init__(self, run, *flags):
        self.master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "TERM": "dumb"}
        argv = [sys.executable, "-m", "lmforge", "chat", str(run), *flags]
        # Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`)
        # ignores SIGINT, and a child would inherit that
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        os.close(slave)
        self.seen = ""

    def expect(self, marker: str, timeout: float = 120) -> str:
        """The output up to and including `marker` (then dropped from what is seen)."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {marker!r} in {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
            except OSError:  # the process closed the terminal
                raise AssertionError(f"no {marker!r} in {self.seen!r}") from None
        before, _, self.seen = self.seen.partition(marker)
        return before + marker

    def rest(self) -> str:
        """What is left to read once the process has ended."""
        while select.select([self.master], [], [], 1)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk.decode("utf-8", "replace")
        return self.seen

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        return code


def test_the_terminal_chat_commands(serve_run, tmp_path):
    term = Terminal(serve_run, *GREEDY)
    try:
        term.expect("/exit (or Ctrl-D)")
        term.expect("> ")
        term.send("/system Be brief.")
        term.expect("(system message set)")
        term.send("Hello wine")
        term.expect("> ")
        term.send(f"/save {tmp_path / 'one.json'}")
        term.expect("(saved 3 messages")
        term.send("/reset")
        term.expect("(history cleared")
        term.send(f"/save {tmp_path / 'two.json'}")
        term.expect("(saved 1 messages")
        term.send("/exit")
        assert term.close() == 0
    finally:
        term.proc.kill()
    reply = greedy_reply(serve_run, HELLO)[0]
    saved = json.loads((tmp_path / "one.json").read_text(encoding="utf-8"))
    assert saved == [*HELLO, {"role": "assistant", "content": reply}]
    assert json.loads((tmp_path / "two.json").read_text()) == [HELLO[0]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_ctrl_c_stops_the_answer_and_a_second_one_quits(serve_run):
    term = Terminal(serve_run, "--temperature", "0", "--max-new-tokens", "100000")
    try:
        term.expect("> ")
        term.send("Hello wine")  # greedy, this one runs to its length (thousands of tokens)
        term.expect("Hello wine")  # the echo
        term.expect("The")  # an early piece of the answer
        term.proc.send_signal(signal.SIGINT)
        term.expect(" [stopped]")
        term.expect("> ")
        assert term.proc.poll() is None  # still chatting
        # a second Ctrl-C, at the prompt, once input() waits (one sent while it starts waits
        # for the next: a person's comes later); it quits without the hint a first one prints
        time.sleep(1)
        for _ in range(3):
            term.proc.send_signal(signal.SIGINT)
            try:
                term.proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        assert "(Ctrl-C again" not in term.rest()
        assert term.close() == 0
    finally:
        term.proc.kill()
