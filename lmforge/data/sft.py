"""Supervised fine-tuning data: records -> conversations -> ids whose labels cover the answers.

Three record formats, told apart by the first record: chat `messages` (role/content), `prompt` /
`completion`, and Alpaca (`instruction`, optional `input`, `output`). A field map
(`prompt=question,completion=answer.text`) names other fields; a dotted path reads nested fields
and the strings of a list are joined. Every record becomes a conversation rendered with the
model's chat template, so the fine-tuned model answers the way `chat` and the server ask.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.windows import IGNORE
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers.chat import ROLES, ChatTemplate, messages_to_ids

log = logging.getLogger(__name__)

# The fields each format needs; "input" (Alpaca) and "system" are optional.
FORMATS = {
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
FIELDS = ("messages", "prompt", "completion", "instruction", "input", "output", "system")
LIST_JOIN = "\n\n"  # the strings of a list field (several answers) become one text


def parse_field_map(spec: str | None) -> dict[str, str]:
    """'prompt=question,completion=answer.text' -> {"prompt": "question", "completion": ...}.

    Each name not mapped reads the field of the same name.
    """
    mapping = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or ours not in FIELDS or not theirs:
            raise ConfigError(
                f"--field {spec!r}: with --task sft it maps record fields as NAME=FIELD[,...], "
                f"NAME one of {', '.join(FIELDS)} (e.g. --field prompt=question,completion=answer)"
            )
        mapping[ours] = theirs
    return mapping


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON list or a JSONL file (one object a line), or of a dataset name
    (`eli5`) that is one."""
    from lmforge.data.datasets import DATASETS, resolve_dataset

    path = resolve_dataset(str(path)) if str(path) in DATASETS else Path(path)
    if not path.is_file() or path.suffix not in (".json", ".jsonl"):
        raise DataError(
            f"--task sft reads a .json or .jsonl file of records, and {path} is not one: "
            "pass --data FILE.jsonl"
        )
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as e:
            raise DataError(f"{path} is not valid JSON ({e}); fix the file") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise DataError(f"{path}: line {number} is not valid JSON ({e}); fix it") from None
    if not records:
        raise DataError(f"{path} holds no records: give it at least one JSON object")
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {number} is not a JSON object; make it one")
    return records


def detect_format(record: dict, fields: dict[str, str]) -> str:
    """The format of a record ("messages", "prompt-completion" or "alpaca") given the field map."""
    for fmt, needed in FORMATS.items():
        if any(name in fields for name in needed):
            return fmt
    for fmt, needed in FORMATS.items():
        if all(name in record for name in needed):
            return fmt
    raise DataError(
        f"the first record's fields ({', '.join(record) or 'none'}) fit no SFT format: give "
        "'messages', 'prompt' and 'completion', or 'instruction' and 'output', or map yours "
        "with --field prompt=FIELD,completion=FIELD"
    )


def read_path(record: dict, path: str):
    """The value at a dotted path ("answer.text", "answers.0"); a list on the way is read
    element by element and its strings are joined. Raises KeyError when a step is missing."""
    value = record
    for i, step in enumerate(path.split(".")):
        if isinstance(value, list) and not step.isdigit():
            rest = ".".join(path.split(".")[i:])
            parts = [read_path({"_": v}, "_." + rest) for v in value]
            return LIST_JOIN.join(str(p) for p in parts)
        if isinstance(value, list):
            if int(step) >= len(value):
                raise KeyError(step)
            value = value[int(step)]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise KeyError(step)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return LIST_JOIN.join(value)
    return value


def to_messages(record: dict, number: int, fmt: str, fields: dict[str, str], where: str) -> list:
    """One record as a conversation [{"role", "content"}, ...]; DataError names the record and
    the field that is missing or not text."""

    def get(name: str, required: bool = True):
        source = fields.get(name, name)
        try:
            value = read_path(record, source)
        except KeyError:
            if not required:
                return None
            others = ",".join(f"{k}={v}" for k, v in fields.items() if k != name)
            raise DataError(
                f"{where}: record {number} has no field {source!r} (needed for {fmt} records); "
                f"add it, or map another field with --field {name}=FIELD"
                + (f",{others}" if others else "")
            ) from None
        if name != "messages" and not isinstance(value, str):
            raise DataError(
                f"{where}: record {number}: field {source!r} is {type(value).__name__}, not "
                "text; map a text field with --field"
            )
        return value

    system = get("system", required=False)
    head = [{"role": "system", "content": system}] if system else []
    if fmt == "prompt-completion":
        return [*head, _turn("user", get("prompt")), _turn("assistant", get("completion"))]
    if fmt == "alpaca":
        extra = get("input", required=False)
        prompt = get("instruction") + (f"\n\n{extra}" if extra else "")
        return [*head, _turn("user", prompt), _turn("assistant", get("output"))]
    messages = get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: record {number}: 'messages' must be a non-empty list of "
            "{'role': ..., 'content': ...}; fix the record"
        )
    for i, m in enumerate(messages):
        for key in ("role", "content"):
            if not isinstance(m, dict) or not isinstance(m.get(key), str):
                raise DataError(
                    f"{where}: record {number}: messages[{i}] has no text field {key!r}; "
                    "give every message a 'role' and a 'content' string"
                )
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: record {number}: messages[{i}] has role {m['role']!r}, which the "
                f"chat template does not accept; use one of {', '.join(ROLES)}"
            )
    return [*head, *({"role": m["role"], "content": m["content"]} for m in messages)]


def _turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def encode_conversation(tokenizer, messages: list[dict], template: ChatTemplate):
    """(ids, is_answer) of a whole conversation: int64 ids of the rendered text and a bool array,
    True on the tokens of every assistant turn (its content and its end marker)."""
    ids = messages_to_ids(tokenizer, messages, template, add_generation_prompt=False)
    is_answer = np.zeros(len(ids), dtype=bool)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = messages_to_ids(tokenizer, messages[:i], template, True) if i else []
        through = messages_to_ids(tokenizer, messages[: i + 1], template, False)
        is_answer[_common_prefix(ids, before) : _common_prefix(ids, through)] = True
    return np.asarray(ids, dtype=np.int64), is_answer


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


@dataclass
class SFTRecords:
    """Encoded conversations: ids and which tokens carry loss (`targets`), one array each, and
    the number of the record each came from (0-based, in the file's order)."""

    ids: list[np.ndarray]
    targets: list[np.ndarray]
    numbers: list[int] | None = None

    def __post_init__(self):
        if self.numbers is None:
            self.numbers = list(range(len(self.ids)))

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "SFTRecords":
        return SFTRecords(
            [self.ids[i] for i in index],
            [self.targets[i] for i in index],
            [self.numbers[i] for i in index],
        )


def to_conversations(
    records: list[dict], fields: dict[str, str] | None = None, where: str = "the data"
) -> list[list[dict]]:
    """Every record as a conversation, in the format of the first record (see detect_format)."""
    if not records:
        raise DataError(f"{where} holds no records: give it at least one JSON object")
    fields = fields or {}
    fmt = detect_format(records[0], fields)
    conversations = [to_messages(r, n, fmt, fields, where) for n, r in enumerate(records, 1)]
    log.info("sft: %s %s records in %s", f"{len(records):,}", fmt, where)
    return conversations


def encode_conversations(
    conversations: list[list[dict]],
    tokenizer,
    template: ChatTemplate,
    train_on_prompt: bool = False,
    where: str = "the data",
) -> SFTRecords:
    """Every conversation as ids; the loss covers the assistant tokens (every token with
    `train_on_prompt`)."""
    ids, targets = [], []
    for number, messages in enumerate(conversations, 1):
        if getattr(tokenizer, "kind", None) == "char":
            _check_characters(tokenizer, template.render(messages, False), number, where)
        try:
            row, is_answer = encode_conversation(tokenizer, messages, template)
        except (DataError, ConfigError) as e:  # a template that refuses the conversation
            raise DataError(f"{where}: record {number}: {e}") from None
        ids.append(row)
        targets.append(np.ones_like(is_answer) if train_on_prompt else is_answer)
    return SFTRecords(ids, targets)


def _check_characters(tokenizer, text: str, number: int, where: str) -> None:
    """DataError naming the record and the character a char vocabulary lacks."""
    from lmforge.tokenizers.char import UnknownCharacterError

    try:
        tokenizer.encode(text)
    except UnknownCharacterError as e:
        raise DataError(
            f"{where}: record {number} holds {e.char!r}, which the model's char tokenizer lacks; "
            "replace or drop that character in the data"
        ) from None


def fit_to_block(records: SFTRecords, block_size: int, split: str = "train") -> SFTRecords:
    """Examples of at most block_size + 1 tokens: a longer one loses the start of its prompt
    when all its loss-carrying tokens still fit, else it is dropped (as is one with nothing to
    learn: no assistant turn); one log line says how many."""
    room = block_size + 1
    ids, targets, numbers, cut, dropped = [], [], [], 0, 0
    for row, target, number in zip(records.ids, records.targets, records.numbers):
        if not target[1:].any():
            dropped += 1
            continue
        if len(row) > room:
            first = int(np.argmax(target)) if target.any() else len(row)
            if first < len(row) - room or target.all():
                dropped += 1
                continue
            row, target, cut = row[-room:], target[-room:], cut + 1
        ids.append(row)
        targets.append(target)
        numbers.append(number)
    if cut or dropped:
        log.info(
            "sft: %d of %d %s examples were longer than %d tokens or had no answer: %d cut from "
            "the left of the prompt, %d dropped (a larger --block-size keeps long ones)",
            cut + dropped,
            len(records),
            split,
            room,
            cut,
            dropped,
        )
    if not ids and len(records):
        raise DataError(
            f"every {split} example is longer than {room} tokens or has no assistant turn, and "
            "was dropped: raise --block-size"
        )
    return SFTRecords(ids, targets, numbers)


def shifted(row: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of one example: labels[t] = row[t + 1] where it carries loss, else -100."""
    return row[:-1], np.where(target[1:], row[1:], IGNORE)


class SFTExamples:
    """One example per row, a batch padded to its longest example (dynamic padding).

    Rows for evaluation are best sorted by length (sort=True), so batches carry little padding.
    """

    def __init__(self, records: SFTRecords, pad_id: int, block_size: int, sort: bool = False):
        order = np.argsort([len(r) for r in records.ids], kind="stable") if sort else None
        self.records = records.subset(order) if sort else records
        self.pad_id, self.length = pad_id, block_size

    def __len__(self) -> int:
        return len(self.records)

    def get(self, indices) -> dict:
        pairs = [shifted(self.records.ids[i], self.records.targets[i]) for i in np.asarray(indices)]
        T = max(len(inputs) for inputs, _ in pairs)
        token_ids = np.full((len(pairs), T), self.pad_id, dtype=np.int64)
        labels = np.full((len(pairs), T), IGNORE, dtype=np.int64)
        real = np.zeros((len(pairs), T), dtype=bool)
        for row, (inputs, targets) in enumerate(pairs):
            token_ids[row, : len(inputs)] = inputs
            labels[row, : len(inputs)] = targets
            real[row, : len(inputs)] = True
        return {"token_ids": token_ids, "labels": labels, "padding_mask": real}


class PackedSFTExamples:
    """Several examples side by side in rows of `block_size` tokens (first-fit decreasing), each
    token tagged with its example's number in the row (`document_ids`, 0 = padding), so that the
    model's attention never crosses from one example into another."""

    def __init__(self, records: SFTRecords, pad_id: int, block_size: int):
        self.records, self.pad_id, self.length = records, pad_id, block_size
        sizes = np.array([len(r) - 1 for r in records.ids])
        room, self.rows = np.zeros(0, dtype=np.int64), []
        for i in np.argsort(-sizes, kind="stable"):
            fits = np.flatnonzero(room >= sizes[i])
            if len(fits):
                self.rows[fits[0]].append(int(i))
                room[fits[0]] -= sizes[i]
            else:
                self.rows.append([int(i)])
                room = np.append(room, block_size - sizes[i])
        log.info(
            "sft: packed %d examples into %d rows of %d tokens (%.0f%% filled)",
            len(records),
            len(self.rows),
            block_size,
            100 * sizes.sum() / max(1, len(self.rows) * block_size),
        )

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices) -> dict:
        n, T = len(np.asarray(indices)), self.length
        token_ids = np.full((n, T), self.pad_id, dtype=np.int64)
        labels = np.full((n, T), IGNORE, dtype=np.int64)
        document_ids = np.zeros((n, T), dtype=np.int64)
        for row, index in enumerate(np.asarray(indices)):
            at = 0
            for number, i in enumerate(self.rows[index], 1):
                inputs, targets = shifted(self.records.ids[i], self.records.targets[i])
                token_ids[row, at : at + len(inputs)] = inputs
                labels[row, at : at + len(inputs)] = targets
                document_ids[row, at : at + len(inputs)] = number
                at += len(inputs)
        return {"token_ids": token_ids, "labels": labels, "document_ids": document_ids}


def split_records(records: SFTRecords, val_fraction: float, seed: int):
    """(train, val): a random `val_fraction` of the records held out (at least one when the
    fraction is positive and there are two or more records)."""
    n = len(records)
    num_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        num_val = min(max(num_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return records.subset(np.sort(order[num_val:])), records.subset(np.sort(order[:num_val]))
