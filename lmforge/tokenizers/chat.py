"""Chat messages -> prompt ids: the one place a conversation becomes tokens (server, CLI, Python).

A tokenizer folder that carries a template (`chat_template` in tokenizer_config.json, or a
chat_template.jinja file) is rendered with jinja2 in a sandbox; otherwise the default below.

The default is ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then
`<|im_start|>assistant\\n`; the reply ends at `<|im_end|>`. A tokenizer that cannot encode
those characters (a char vocabulary) gets the plain template instead: `{Role}: {content}\\n`
per message (User:, Assistant:, System:), then `Assistant:`; the reply ends at `\\nUser:`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import ConfigError, DataError
from lmforge.files import write_atomic

CHATML_MESSAGE = "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML_GENERATION = "<|im_start|>assistant\n"
PLAIN_MESSAGE = "{role}: {content}\n"
PLAIN_GENERATION = "Assistant:"
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class ChatTemplate:
    """How messages become text: a jinja source, or None for the default ("chatml" / "plain").

    `stop` holds the strings that end a reply (the end marker the template implies).
    """

    name: str  # "chatml", "plain" or "jinja"
    source: str | None = None
    stop: list[str] = field(default_factory=list)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **tokens) -> str:
        """The prompt text of `messages` ([{"role": ..., "content": str}, ...])."""
        if self.name == "jinja":
            from jinja2 import TemplateError

            try:
                return _jinja(self.source).render(
                    messages=messages, add_generation_prompt=add_generation_prompt, **tokens
                )
            except TemplateError as e:  # a broken template, or one the sandbox refuses
                raise DataError(f"the model's chat template failed: {e}") from None
        if self.name == "chatml":
            text = "".join(CHATML_MESSAGE.format(**m) for m in messages)
            return text + (CHATML_GENERATION if add_generation_prompt else "")
        text = "".join(
            PLAIN_MESSAGE.format(role=m["role"].capitalize(), content=m["content"])
            for m in messages
        )
        return text + (PLAIN_GENERATION if add_generation_prompt else "")


def _jinja(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):  # Hugging Face templates call it on bad conversations
        raise DataError(f"the chat template refused the messages: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def _encodes(tokenizer, text: str) -> bool:
    try:
        return tokenizer.decode(tokenizer.encode(text)) == text
    except Exception:  # noqa: BLE001 - any tokenizer failure means "cannot encode"
        return False


def load_chat_template(tokenizer, folder: str | Path | None = None) -> ChatTemplate:
    """The template of a model folder (its tokenizer folder's, when it has one), else the default
    that `tokenizer` can encode (ChatML, else plain)."""
    source = None
    if folder is not None:
        folder = Path(folder)
        for where in (folder, folder / "tokenizer"):
            if (where / "chat_template.jinja").is_file():
                source = (where / "chat_template.jinja").read_text(encoding="utf-8")
                break
            config = where / "tokenizer_config.json"
            if config.is_file():
                source = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
                if isinstance(source, list):  # named templates: the "default" one
                    source = next((t["template"] for t in source if t["name"] == "default"), None)
                if source:
                    break
    eos = getattr(tokenizer, "eos_token", None)
    if source:
        stop = ["<|im_end|>"] if "<|im_end|>" in source and eos != "<|im_end|>" else []
        return ChatTemplate("jinja", source, stop)
    if _encodes(tokenizer, CHATML_MESSAGE.format(role="user", content="hi") + CHATML_GENERATION):
        return ChatTemplate("chatml", stop=["<|im_end|>"])
    return ChatTemplate("plain", stop=["\nUser:"])


def messages_to_ids(
    tokenizer,
    messages: list[dict],
    template: ChatTemplate | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """The prompt ids of a conversation under `template` (default: load_chat_template's).

    Args:
        messages: [{"role": "system" | "user" | "assistant" | ..., "content": str}, ...].

    Example:
        ids = messages_to_ids(tok, [{"role": "user", "content": "Hello"}])
    """
    template = template or load_chat_template(tokenizer)
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(
                f"messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': a string}}"
            )
    tokens = {
        "bos_token": getattr(tokenizer, "bos_token", None) or "",
        "eos_token": getattr(tokenizer, "eos_token", None) or "",
    }
    text = template.render(messages, add_generation_prompt, **tokens)
    try:
        ids = list(tokenizer.encode(text))
    except DataError as e:
        raise DataError(f"the chat prompt cannot be encoded by this tokenizer: {e}") from None
    if not ids:
        raise ConfigError("the messages render to an empty prompt; give a message with content")
    return ids


def save_chat_template(folder: str | Path, template: ChatTemplate) -> None:
    """Record `template` in a tokenizer folder's tokenizer_config.json (replaced atomically): a
    jinja template as its `chat_template`, which load_chat_template reads back; a default by its
    name (`lmforge_chat_template`: "chatml" or "plain"), which the same tokenizer picks again.

    Example:
        save_chat_template("runs/assistant/tokenizer", load_chat_template(tok))
    """
    path = Path(folder) / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as e:
        raise DataError(f"{path}: unreadable ({e}); fix or remove it") from None
    if template.name == "jinja":
        config["chat_template"] = template.source
    else:
        config["lmforge_chat_template"] = template.name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
