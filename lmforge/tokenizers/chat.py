"""Chat messages -> prompt ids: the one place a conversation becomes tokens (server, CLI, Python).

A template is Jinja rendered as transformers' `apply_chat_template` renders it (a sandbox with
trim_blocks and lstrip_blocks, `raise_exception`, a `tojson` that keeps non-ASCII,
`strftime_now`; the variables `messages`, `add_generation_prompt`, `tools`, `documents` and the
tokenizer's special tokens: `bos_token`, `eos_token`, ...). The rendered text is encoded as it
stands, with no special token added: a template that starts with `{{ bos_token }}` gets one BOS.

Where a template comes from, first found: the folder's chat_template.jinja, its
tokenizer_config.json's `chat_template` (a string, or named templates: the "default" one), the
same in its tokenizer/ folder, the tokenizer's own (a converted run keeps it); else the default,
ChatML:

    <|im_start|>{role}\\n{content}<|im_end|>\\n      per message, then, for a reply,
    <|im_start|>assistant\\n                          and the reply ends at <|im_end|>.

A tokenizer that cannot encode those markers (a char vocabulary) gets the plain default instead:
`{Role}: {content}\\n` per message (System:, User:, Assistant:), then `Assistant:`; the reply ends
at `\\nUser:`. `save_chat_template` writes a template into a tokenizer folder, where loading and
the Hugging Face export (`lmforge convert RUN OUT --to hf`) find it.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from lmforge.errors import ConfigError, DataError
from lmforge.files import write_atomic

ROLES = ("system", "developer", "user", "assistant", "tool")
TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
LMFORGE_CONFIG_FILE = "lmforge_tokenizer.json"  # tokenizers.interface.CONFIG_FILE

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass
class ChatTemplate:
    """How messages become text: a Jinja source, named "chatml" or "plain" for the defaults and
    "jinja" for any other.

    `stop` holds the strings that end a reply (the end marker the template implies).
    """

    name: str  # "chatml", "plain" or "jinja"
    source: str | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.source is None:  # ChatTemplate("chatml") / ChatTemplate("plain")
            self.source = {"chatml": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}.get(self.name)
        if self.source is None:
            raise ConfigError(f"chat template {self.name!r} needs a Jinja source")

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **tokens) -> str:
        """The prompt text of `messages` ([{"role": ..., "content": str}, ...]); `tokens` are the
        special tokens by name (bos_token="<s>", ...)."""
        from jinja2 import TemplateError

        try:
            return _compile(self.source).render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **tokens,
            )
        except _Refused as e:
            raise DataError(f"the chat template refused the messages: {e}") from None
        except TemplateError as e:  # a broken template, or one the sandbox refuses
            raise DataError(f"the model's chat template failed: {e}") from None

    def stop_ids(self, tokenizer) -> tuple[int, ...]:
        """The ids of the stop strings that are one token of the vocabulary (ChatML's <|im_end|>
        where it is a special token: special tokens stay out of the text, so the string alone
        would never be seen). A reply ends at these and at the tokenizer's end-of-text ids."""
        ids = (tokenizer.token_to_id(text) for text in self.stop)
        return tuple(i for i in ids if i is not None)


def _compile(source: str):
    return _environment().from_string(source)


class _Refused(Exception):
    """raise_exception() in a template: it does not accept the conversation."""


@lru_cache(maxsize=1)
def _environment():
    """The Jinja environment of transformers' chat templates (utils/chat_template_utils.py)."""
    from jinja2 import TemplateError, nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Refused(_Refused, TemplateError):
        pass

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask templates): the text as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise Refused(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own escapes HTML characters and non-ASCII; transformers' does neither
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _encodes(tokenizer, text: str) -> bool:
    try:
        return tokenizer.decode(tokenizer.encode(text)) == text
    except Exception:  # noqa: BLE001 - any tokenizer failure means "cannot encode"
        return False


def _folder_source(folder: Path) -> str | None:
    """A tokenizer folder's template: chat_template.jinja, else tokenizer_config.json's."""
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    if not (folder / CONFIG_FILE).is_file():
        return None
    try:
        source = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError) as e:
        raise DataError(f"{folder / CONFIG_FILE}: unreadable ({e}); fix or remove it") from None
    if isinstance(source, list):  # named templates: the "default" one
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    return source if isinstance(source, str) and source else None


def saved_chat_template(tokenizer, folder: str | Path | None = None) -> ChatTemplate | None:
    """The template a model folder (or its tokenizer/ folder, or the tokenizer itself) carries;
    None where it carries none (the model then gets a default: see load_chat_template)."""
    source = None
    if folder is not None:
        folder = Path(folder)
        source = _folder_source(folder) or _folder_source(folder / "tokenizer")
    source = source or getattr(tokenizer, "chat_template", None)
    if not source:
        return None
    if source == PLAIN_TEMPLATE:  # saved by save_chat_template: the same defaults back
        return ChatTemplate("plain", stop=["\nUser:"])
    if source == CHATML_TEMPLATE:
        return ChatTemplate("chatml", stop=["<|im_end|>"])
    eos = getattr(tokenizer, "eos_token", None)
    stop = ["<|im_end|>"] if "<|im_end|>" in source and eos != "<|im_end|>" else []
    return ChatTemplate("jinja", source, stop)


def load_chat_template(tokenizer, folder: str | Path | None = None) -> ChatTemplate:
    """The template of a model folder (saved_chat_template's), else the default that `tokenizer`
    can encode (ChatML, else plain); see the module docstring."""
    saved = saved_chat_template(tokenizer, folder)
    if saved is not None:
        return saved
    chatml = ChatTemplate("chatml", stop=["<|im_end|>"])
    if _encodes(tokenizer, chatml.render([{"role": "user", "content": "hi"}])):
        return chatml
    return ChatTemplate("plain", stop=["\nUser:"])


def save_chat_template(folder: str | Path, template: ChatTemplate) -> None:
    """Write `template` into a tokenizer folder (a run folder: its tokenizer/), as the
    `chat_template` of tokenizer_config.json and of lmforge_tokenizer.json where there is one;
    each file is replaced atomically. load_chat_template, the server, `lmforge chat` and the
    Hugging Face export then use it.

    Example:
        save_chat_template("runs/assistant", load_chat_template(tok))  # the ChatML default
    """
    folder = Path(folder)
    if not (folder / LMFORGE_CONFIG_FILE).is_file() and (folder / "tokenizer").is_dir():
        folder = folder / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, LMFORGE_CONFIG_FILE):
        path = folder / name
        if name == LMFORGE_CONFIG_FILE and not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except ValueError as e:
            raise DataError(f"{path}: unreadable ({e}); fix or remove it") from None
        config["chat_template"] = template.source
        write_atomic(path, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    (folder / TEMPLATE_FILE).unlink(missing_ok=True)  # it would win over the one just written


def check_messages(messages) -> list[dict]:
    """`messages` if it is a list of {"role": one of ROLES, "content": str}; else ConfigError
    naming the first bad message."""
    if not isinstance(messages, list):
        raise ConfigError(
            'messages must be a JSON list of {"role": ..., "content": ...} objects, '
            f"not {type(messages).__name__}"
        )
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise ConfigError(
                f"messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': a string}}"
            )
    return messages


def messages_to_ids(
    tokenizer,
    messages: list[dict],
    template: ChatTemplate | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """The prompt ids of a conversation under `template` (default: load_chat_template's), the
    same ids as transformers' `apply_chat_template(messages, add_generation_prompt=...)`.

    Args:
        messages: [{"role": "system" | "user" | "assistant" | ..., "content": str}, ...].

    Example:
        ids = messages_to_ids(tok, [{"role": "user", "content": "Hello"}])
    """
    template = template or load_chat_template(tokenizer)
    check_messages(messages)
    special = tokenizer.special_tokens() if hasattr(tokenizer, "special_tokens") else {}
    tokens = {f"{role}_token": t for role, t in special.items() if t is not None}
    text = template.render(messages, add_generation_prompt, **tokens)
    try:
        ids = list(tokenizer.encode(text))  # never adds special tokens: BOS is the template's
    except DataError as e:
        raise DataError(f"the chat prompt cannot be encoded by this tokenizer: {e}") from None
    if not ids:
        raise ConfigError("the messages render to an empty prompt; give a message with content")
    return ids


def fit_messages(
    tokenizer, messages: list[dict], template: ChatTemplate, max_tokens: int | None
) -> tuple[list[dict], list[int]]:
    """(the messages kept, their prompt ids): the oldest turns (a user message and the replies
    after it) dropped until the prompt has at most `max_tokens` ids (None: no limit); a leading
    system message stays. ConfigError when even the last turn alone does not fit."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    while True:
        ids = messages_to_ids(tokenizer, messages, template)
        if max_tokens is None or len(ids) <= max_tokens:
            return messages, ids
        rest = messages[start:]
        cut = next((i for i in range(1, len(rest)) if rest[i]["role"] == "user"), None)
        if cut is None:
            raise ConfigError(
                f"the conversation's last message alone takes {len(ids)} tokens, more than the "
                f"{max_tokens} the context leaves for the prompt; send a shorter message or "
                "lower --max-new-tokens"
            )
        messages = messages[:start] + rest[cut:]
