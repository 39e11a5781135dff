"""`lmforge chat`: talk with a run in the terminal (multi-turn, streamed, slash commands), or, when
standard input is not a terminal, answer one conversation read from it as JSON (for scripts).

Every turn renders the whole history with the run's chat template (lmforge.tokenizers.chat) and
decodes the reply on the Engine; the oldest turns go when the history would overflow the context.
"""

import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.cli import options
from lmforge.cli.sample_cmd import SampleConfig, sampling_options
from lmforge.errors import ConfigError, LmforgeError

# sample's flags that a chat turn has no use for (the prompt is the conversation; one answer)
NOT_CHAT = ("prompt", "num_samples", "num_beams", "length_penalty", "early_stopping")
HELP_LINE = "/system TEXT, /reset, /save FILE, /exit (or Ctrl-D); Ctrl-C stops an answer"
EXAMPLE = '[{"role": "user", "content": "Hello"}]'


@dataclass
class ChatConfig:
    system: str | None = field(
        default=None, metadata={"help": "system message the conversation starts with"}
    )
    json: bool = field(
        default=False,
        metadata={
            "help": "piped input: print one JSON line (reply, finish_reason, prompt_tokens, "
            "completion_tokens, dropped_messages)"
        },
    )


def add_parser(sub):
    p = sub.add_parser(
        "chat",
        help="chat with a run in the terminal",
        description="Chat with a run (or a Hugging Face folder) in the terminal: "
        f"{HELP_LINE}. With standard input not a terminal, read one JSON messages list "
        f"(or {{\"messages\": [...]}}), e.g. '{EXAMPLE}', and print the reply.",
    )
    p.add_argument("run", help="run folder, Hugging Face folder or model name (distilgpt2)")
    options.add_options(p, SampleConfig, skip=NOT_CHAT)
    options.add_options(p, ChatConfig)
    return p


class ChatSession:
    """A loaded run, its chat template and a one-slot Engine: answers a conversation per turn."""

    def __init__(self, loaded, sample: SampleConfig):
        from lmforge.generation.engine import Engine
        from lmforge.generation.text import text_options
        from lmforge.tokenizers.chat import load_chat_template

        tok = self.tokenizer = loaded.tokenizer
        self.sample = sample
        self.template = load_chat_template(tok, loaded.folder)
        self.engine = Engine(loaded.model, slots=1, tokenizer=tok, threads=sample.threads)
        self.stop_ids = (
            *text_options(self.tokenizer, None, {})[1],
            *self.template.stop_ids(self.tokenizer),
        )
        # the prompt leaves room for the reply: max_new_tokens, at most half the context
        self.context = getattr(loaded.model.config, "max_seq_len", None)
        room = None if self.context is None else min(sample.max_new_tokens, self.context // 2)
        self.prompt_limit = None if room is None else self.context - room

    def start(self, messages: list[dict]):
        """(handle of the reply, the messages kept, prompt ids): the oldest turns cut to fit."""
        from lmforge.generation.engine import SamplingParams
        from lmforge.tokenizers.chat import fit_messages

        kept, ids = fit_messages(self.tokenizer, messages, self.template, self.prompt_limit)
        params = SamplingParams(
            max_new_tokens=self.sample.max_new_tokens,
            **sampling_options(self.sample),
            stop=[*(self.sample.stop or ()), *self.template.stop],
            stop_token_ids=self.stop_ids,
        )
        return self.engine.submit(ids, params), kept, ids

    def say_cut(self, before: int, after: int) -> None:
        if after < before:
            print(
                f"(history cut: the {before - after} oldest message(s) dropped to fit the "
                f"context of {self.context} tokens)",
                file=sys.stderr,
            )


def run(args) -> int:
    from lmforge.api import load_run

    sample = options.from_args(args, SampleConfig)
    cfg = options.from_args(args, ChatConfig)
    piped = not sys.stdin.isatty()
    messages = read_messages(sys.stdin.read()) if piped else []
    if cfg.system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": cfg.system})
    loaded = load_run(args.run, sample.device, sample.unknown_token, sample.quantize)
    loaded.require("causal-lm", "`lmforge chat`")
    session = ChatSession(loaded, sample)
    if piped:
        return answer_once(session, messages, cfg.json)
    return talk(session, messages, args.run)


def read_messages(text: str) -> list[dict]:
    """The messages of piped input: a JSON list, or an object with a "messages" list."""
    from lmforge.tokenizers.chat import check_messages

    if not text.strip():
        raise ConfigError(f"standard input is empty; pipe a JSON messages list, e.g. '{EXAMPLE}'")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(
            f"standard input is not JSON ({e}); pipe a JSON messages list, e.g. '{EXAMPLE}'"
        ) from None
    if isinstance(value, dict):
        if "messages" not in value:
            raise ConfigError(f'the JSON object on stdin has no "messages"; e.g. {EXAMPLE}')
        value = value["messages"]
    messages = check_messages(value)
    if not messages:
        raise ConfigError(f"the messages list is empty; give at least one, e.g. '{EXAMPLE}'")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def answer_once(session: ChatSession, messages: list[dict], as_json: bool) -> int:
    """Piped mode: the reply to `messages` on stdout (streamed), or one JSON line."""
    handle, kept, ids = session.start(messages)
    session.say_cut(len(messages), len(kept))
    for piece in handle.texts():
        if not as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if as_json:
        line = {
            "reply": handle.text,
            "finish_reason": handle.finish_reason,
            "prompt_tokens": len(ids),
            "completion_tokens": len(handle.tokens),
            "dropped_messages": len(messages) - len(kept),
        }
        print(json.dumps(line, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


def talk(session: ChatSession, messages: list[dict], name) -> int:
    """The terminal chat: read a line, answer it streamed, until /exit, Ctrl-D or a second
    Ctrl-C in a row."""
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # Windows
        pass
    where = f"context {session.context} tokens" if session.context else "no context limit"
    print(f"chatting with {name} ({where}); {HELP_LINE}", file=sys.stderr)
    interrupted = False  # the last thing the user did was Ctrl-C: another one quits
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            if interrupted:
                print()
                return 0
            print("\n(Ctrl-C again, /exit or Ctrl-D to quit)", file=sys.stderr)
            interrupted = True
            continue
        interrupted = False
        if line.startswith("/"):
            if command(line, messages):
                return 0
        elif line:
            interrupted = reply(session, messages, line)


def command(line: str, messages: list[dict]) -> bool:
    """Run one slash command on the history; True for /exit."""
    from lmforge.files import write_atomic

    name, _, arg = line.partition(" ")
    arg = arg.strip()
    has_system = bool(messages) and messages[0]["role"] == "system"
    if name == "/exit":
        return True
    if name == "/system":
        if has_system:
            messages.pop(0)
        if arg:
            messages.insert(0, {"role": "system", "content": arg})
        print(f"(system message {'set' if arg else 'removed'})", file=sys.stderr)
    elif name == "/reset":
        del messages[1 if has_system else 0 :]
        print("(history cleared; the system message stays)", file=sys.stderr)
    elif name == "/save" and not arg:
        print("/save needs a file name: /save chat.json", file=sys.stderr)
    elif name == "/save":
        text = json.dumps(messages, ensure_ascii=False, indent=1) + "\n"
        try:
            write_atomic(Path(arg).expanduser(), text)
            print(f"(saved {len(messages)} messages to {arg})", file=sys.stderr)
        except OSError as e:
            print(f"lmforge: error: cannot write {arg}: {e}", file=sys.stderr)
    else:
        print(f"unknown command {line!r}: {HELP_LINE}", file=sys.stderr)
    return False


def reply(session: ChatSession, messages: list[dict], line: str) -> bool:
    """Answer the user's `line`, streaming it; the turn joins the history. True when Ctrl-C
    stopped the answer."""
    messages.append({"role": "user", "content": line})
    try:
        handle, kept, _ = session.start(messages)
    except LmforgeError as e:  # a message the template refuses, or too long for the context
        messages.pop()
        print(f"lmforge: error: {e}", file=sys.stderr)
        return False
    session.say_cut(len(messages), len(kept))
    messages[:] = kept
    before = signal.signal(signal.SIGINT, lambda *_: handle.cancel())  # ends it at the next step
    try:
        for piece in handle.texts():
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, before)
    stopped = handle.finish_reason == "cancelled"
    print(" [stopped]" if stopped else "")
    messages.append({"role": "assistant", "content": handle.text})
    return stopped
