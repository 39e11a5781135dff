"""What a run trains and evaluates on: the prepared corpus, each split's examples for the
causal LM (windows, epochs, documents, blocks) or for --task classify|mlm (packed documents,
labels, masking), the records of --task sft, and the labelled split an evaluation reads."""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.prepare import PrepareConfig, PreparedData, prepare
from lmforge.data.windows import ChunkedBlocks, PaddedDocuments, StrideWindows
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = {"test": "val", "val": "val", "validation": "val", "train": "train"}  # -> prepared split
# Masked-LM pretraining, as in the Keras tutorial: 25% of the tokens, at most 64 per sequence
MLM_MASK_RATE, MLM_MAX_SELECTIONS = 0.25, 64


def load_data(cfg) -> PreparedData:
    """A prepared folder as given, or raw data prepared on the fly into the cache."""
    path = Path(cfg.data)
    if (path / "meta.json").is_file():
        return PreparedData(path)
    from lmforge.data.corpus import open_source
    from lmforge.data.datasets import cache_dir
    from lmforge.data.prepare import cache_key

    pcfg = PrepareConfig(
        data=cfg.data,
        tokenizer=cfg.tokenizer,
        vocab_size=cfg.vocab_size,
        field=cfg.field,
        label_field=cfg.label_field,
        normalize_labels=cfg.normalize_labels,
        val_fraction=cfg.val_fraction,
    )
    key = cache_key(pcfg, open_source(cfg.data, field=cfg.field, label_field=cfg.label_field))
    return prepare(pcfg, cache_dir() / "prepared" / key[:20])


def make_examples(
    data: PreparedData,
    split: str,
    batching: str,
    block_size: int,
    task: dict | None = None,
    stride: int | None = None,
):
    """The examples of one split; `stride` spaces the windows of "epochs"/"windows" batching
    (default block_size: each window's last target is the next one's first input)."""
    if task is not None:  # classify / mlm: documents packed once, [START] text [END]
        return make_task_examples(data, split, task, block_size)
    if batching == "documents":
        pad = data.tokenizer.pad_id if data.tokenizer.pad_id is not None else 0
        end = data.tokenizer.eos_id if data.tokenizer.eos_id is not None else pad
        return PaddedDocuments(data.documents(split), block_size, pad_id=pad, end_id=end)
    if batching == "blocks":  # padded with end-of-text (GPT-2 has no pad token) when partial
        tok = data.tokenizer
        pad = tok.eos_id if tok.eos_id is not None else (tok.pad_id or 0)
        return ChunkedBlocks(data.tokens(split), block_size, pad, keep_partial=(split != "train"))
    return StrideWindows(
        data.tokens(split), block_size, stride=stride, keep_partial=(split != "train")
    )


def task_spec(cfg, family: str, data: PreparedData | None = None) -> dict | None:
    """What `--task` trains, as build_task's task dict (None: the causal LM); with `data`, the
    labels and tokenizer are checked against it.

    Example:
        task_spec(cfg, "bert", data)  # {"kind": "classify", "num_classes": 2, ...}
    """
    from lmforge.models import family_module

    tasks = getattr(family_module(family), "TASKS", {})
    kind = cfg.task or next(iter(tasks), "causal-lm")
    if kind == "sft":  # the model is the family's causal LM; only the data differ
        if family not in SFT_FAMILIES:
            raise ConfigError(
                f"--task sft fine-tunes decoder language models ({', '.join(SFT_FAMILIES)} "
                f"families), and --preset {cfg.preset} is a {family} model: use a gpt or llama "
                "preset, or --init-from a gpt or llama run"
            )
        return None
    if kind != "causal-lm" and kind not in tasks:
        raise ConfigError(
            f"--task {kind}: the {family} family (--preset {cfg.preset}) has "
            f"{', '.join(tasks) or 'causal-lm only'}; use a bert preset (bert-tiny) for {kind}"
        )
    if kind == "mlm" and cfg.tokenizer in ("char", "word", "bpe"):
        raise ConfigError(
            f"--task mlm needs a tokenizer with a mask token, and {cfg.tokenizer} has none; "
            "use --tokenizer wordpiece"
        )
    if kind == "causal-lm":
        return None
    spec = {"kind": kind}
    if data is None:
        return spec
    tok = data.tokenizer
    if kind == "mlm" and tok.mask_id is None:
        raise ConfigError(
            f"--task mlm needs a tokenizer with a mask token ([MASK]); this {tok.kind} tokenizer "
            "has none: use --tokenizer wordpiece"
        )
    if kind == "classify":
        labels = data.label_names
        if not labels:
            raise DataError(
                f"--task classify needs labelled data, and {cfg.data} has no labels: use a "
                "pos/ neg/ folder or pass --label-field"
            )
        if cfg.num_classes is not None and cfg.num_classes != len(labels):
            raise ConfigError(
                f"--num-classes {cfg.num_classes} disagrees with the data's {len(labels)} "
                f"classes ({', '.join(labels)}); drop --num-classes"
            )
        seen = set(np.unique(data.labels("train")).tolist())
        unseen = [labels[i] for i in np.unique(data.labels("val")) if i not in seen]
        if unseen:
            raise DataError(
                f"label {unseen[0]!r} appears in the evaluation split but never in training: "
                "add training examples of it or drop them from the evaluation data"
            )
        spec.update(num_classes=len(labels), extra_layers=cfg.extra_layers, labels=labels)
    return spec


# The families whose causal LM takes document_ids (packed rows): what --task sft trains.
SFT_FAMILIES = ("gpt", "llama")


@dataclass
class SFTData:
    """The records of --task sft, encoded with the run's tokenizer and chat template."""

    path: Path
    tokenizer: object
    template: object  # lmforge.tokenizers.chat.ChatTemplate
    train: object  # lmforge.data.sft.SFTRecords
    val: object


def load_sft_data(cfg) -> SFTData:
    """--task sft: the records of cfg.data as conversations, encoded under the chat template of
    the tokenizer (--init-from's, or a folder's; a tokenizer kind is trained on the rendered
    conversations), and split into train and held-out records (--val-fraction).

    Example:
        cfg = TrainConfig(task="sft", data="qa.jsonl", tokenizer="runs/base/tokenizer")
        data = load_sft_data(cfg)  # data.train, data.val: SFTRecords; data.template
    """
    from lmforge.data import sft
    from lmforge.tokenizers.base import load_tokenizer, train_tokenizer
    from lmforge.tokenizers.chat import ChatTemplate, load_chat_template

    conversations = sft.to_conversations(
        sft.read_records(cfg.data), sft.parse_field_map(cfg.field), where=str(cfg.data)
    )
    folder = Path(cfg.tokenizer)
    if folder.exists():
        tok = load_tokenizer(folder)
        template = load_chat_template(tok, folder if folder.is_dir() else None)
    else:  # a new tokenizer learns the default template's markers with the text
        chatml = ChatTemplate("chatml")
        texts = [chatml.render(c, add_generation_prompt=False) for c in conversations]
        vocab = {} if cfg.tokenizer == "char" else {"vocab_size": cfg.vocab_size}
        tok = train_tokenizer(cfg.tokenizer, texts, **vocab)
        template = load_chat_template(tok)
    encoded = sft.encode_conversations(
        conversations, tok, template, cfg.train_on_prompt, where=str(cfg.data)
    )
    train, val = sft.split_records(encoded, cfg.val_fraction, cfg.seed)
    return SFTData(Path(cfg.data), tok, template, train, val)


def make_sft_examples(data: SFTData, split: str, block_size: int, pack: bool):
    """A split of SFT records as examples: packed rows (`pack`), or one example per row padded
    per batch (held-out rows sorted by length)."""
    from lmforge.data.sft import PackedSFTExamples, SFTExamples, fit_to_block

    records = fit_to_block(getattr(data, split), block_size, split)
    tok = data.tokenizer
    pad = next((i for i in (tok.pad_id, tok.eos_id) if i is not None), 0)
    if pack:
        return PackedSFTExamples(records, pad, block_size)
    return SFTExamples(records, pad, block_size, sort=split == "val")


def sft_eval_examples(run, data: str | None = None, field: str | None = None):
    """What `lmforge eval` scores an SFT run on: its held-out records, or every record of
    `data` (mapped with `field`, else the run's --field), encoded with the run's tokenizer and
    chat template; the loss covers the answers only, as in training.

    Args:
        run: an `api.LoadedRun` of a --task sft run.
    """
    from types import SimpleNamespace

    from lmforge.presets import tokenizer_path

    options = {**run.config["train"], "tokenizer": str(tokenizer_path(run.folder))}
    if data is not None:
        options.update(data=data, field=field or options["field"], val_fraction=0.0)
    sft = load_sft_data(SimpleNamespace(**options))  # the run's saved TrainConfig, as read
    return make_sft_examples(sft, "val" if data is None else "train", run.block_size, pack=False)


def make_task_examples(
    data: PreparedData,
    split: str,
    task: dict,
    seq_len: int,
    labels: np.ndarray | None = None,
    sort_by_length: bool | None = None,
):
    """The documents of a split packed once to `seq_len` ([START] ids [END], padded) and kept
    in memory; classify adds their labels (or `labels`), mlm masks them afresh at every batch.
    Rows to evaluate on (by default: split "val") are sorted by length, so that batches carry
    little padding."""
    from lmforge.data.masking import MaskedLMExamples, MaskedLMMaskGenerator
    from lmforge.tokenizers.packing import PackedExamples, StartEndPacker

    tok = data.tokenizer
    pad = tok.pad_id if tok.pad_id is not None else 0
    packer = StartEndPacker(seq_len, tok.bos_id, tok.eos_id, pad)
    docs = data.documents(split)
    packed = packer(docs)
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32  # 4x less memory than int64
    packed["token_ids"] = packed["token_ids"].astype(dtype)
    if packer.num_truncated:
        log.info(
            "%s of %s %s texts were longer than %d tokens and were cut (--max-seq-len %d)",
            f"{packer.num_truncated:,}",
            f"{len(docs):,}",
            "test" if split == "val" else split,
            packer.room,
            seq_len,
        )
    if task["kind"] == "classify":
        packed["labels"] = data.labels(split) if labels is None else labels
    if split == "val" if sort_by_length is None else sort_by_length:
        order = np.argsort(packed["padding_mask"].sum(axis=1), kind="stable")
        packed = {k: v[order] for k, v in packed.items()}
    if task["kind"] == "classify":
        return PackedExamples(packed)
    special = [i for i in (tok.bos_id, tok.eos_id, pad) if i is not None]
    generator = MaskedLMMaskGenerator(
        tok.vocab_size,
        MLM_MASK_RATE,
        tok.mask_id,
        MLM_MAX_SELECTIONS,
        unselectable_token_ids=sorted(set(special) | tok.special_ids()),
    )
    return MaskedLMExamples(PackedExamples(packed), generator)


def labelled_split(
    prepared: str | Path | None,
    data: str | None,
    tokenizer: str | Path,
    field: str | None = None,
    label_field: str | None = None,
    split: str | None = None,
    labels: list[str] | None = None,
    normalize_labels: bool = False,
    unknown_token: str | None = None,
) -> tuple[PreparedData, str, np.ndarray | None]:
    """What a classify/mlm run is evaluated on: (prepared data, its split, label ids numbered as
    the run's `labels`). Without `data`, the run's own prepared folder; with it, `data` (a
    prepared folder made with the run's tokenizer, or raw data prepared with it): its test split
    when it has one, else all of it."""
    from lmforge.data.corpus import open_source

    if data is not None and is_prepared(data):
        found = prepared_with(data, tokenizer)
        has_test = found.num_tokens("val") > 0
        split = split or ("test" if has_test else "train")
        if split == "all":
            raise ConfigError(
                f"--split all: {data} is a prepared folder of train and val splits; pass "
                "--split test or --split train"
            )
        if split == "test" and not has_test:
            raise DataError(f"--split test: {data} has an empty val split; use --split train")
        name = SPLITS[split]
    elif data is None:
        if split == "all":
            raise ConfigError("--split all applies to --data; pass --data or --split test|train")
        found, name = PreparedData(prepared), SPLITS[split or "test"]
    else:
        source = open_source(data, field=field, label_field=label_field)
        tests = ("test", "val", "valid", "validation", "dev")
        has_test = any(d.split in tests for d in source.iter_documents())
        split = split or ("test" if has_test else "all")
        if split != "all" and not has_test:
            raise DataError(f"--split {split}: {data} has no test split; use --split all")
        pcfg = PrepareConfig(
            data=data,
            tokenizer=str(tokenizer),
            field=field,
            label_field=label_field,
            normalize_labels=normalize_labels,  # as the run was trained
            val_fraction=0.0 if split == "all" else 0.5,  # > 0: the source's own split is used
            unknown_token=unknown_token,
        )
        found = _prepare_for_eval(pcfg, source)
        name = "val" if split == "test" else "train"
    if labels is None:  # a masked LM: no labels to check
        return found, name, None
    names, ids = found.label_names, found.labels(name)
    if not names or ids is None:
        raise DataError(f"{data or prepared} has no labels: pass --label-field")
    if (ids < 0).any():
        raise DataError(f"{int((ids < 0).sum())} texts of {data} have no label; label them all")
    unseen = [names[i] for i in np.unique(ids) if names[i] not in labels]
    if unseen:
        raise DataError(
            f"label {unseen[0]!r} was never seen in training (the run knows "
            f"{', '.join(labels)}); evaluate on data with those labels only"
        )
    return found, name, np.array([labels.index(n) for n in names], dtype=np.int64)[ids]


# ---------------------------------------------------------------- what `lmforge eval` reads


def is_prepared(path: str | Path) -> bool:
    """True for a folder `lmforge prepare` wrote (it has meta.json)."""
    return (Path(path) / "meta.json").is_file()


def prepared_with(path: str | Path, tokenizer: str | Path) -> PreparedData:
    """A prepared folder, checked to be encoded with the same vocabulary as `tokenizer`."""
    from lmforge.tokenizers.base import load_tokenizer

    data, ours = PreparedData(path), load_tokenizer(tokenizer)
    theirs = data.tokenizer
    same = theirs.vocab_size == ours.vocab_size and all(
        theirs.id_to_token(i) == ours.id_to_token(i) for i in range(ours.vocab_size)
    )
    if not same:
        raise DataError(
            f"{path} was prepared with another tokenizer ({theirs.kind}, {theirs.vocab_size} "
            f"tokens) than the run's ({ours.kind}, {ours.vocab_size}); pass --data the raw text "
            "instead, and it is encoded with the run's tokenizer"
        )
    return data


def _prepare_for_eval(pcfg: PrepareConfig, source) -> PreparedData:
    """Raw data encoded with a run's saved tokenizer, cached like training data."""
    from lmforge.data.datasets import cache_dir
    from lmforge.data.prepare import UnseenCharacterError, cache_key

    try:
        return prepare(pcfg, cache_dir() / "prepared" / cache_key(pcfg, source)[:20])
    except UnseenCharacterError as e:  # eval cannot train a tokenizer: no --tokenizer here
        raise e.without_retrain() from None


def require_data(run, data: str | None) -> None:
    """ConfigError when neither `data` nor the run names something to evaluate on."""
    if data is None and run.data is None:
        raise ConfigError(
            f"{run.name} brings no data of its own (it is a converted run or a Hugging Face "
            "folder); pass --data FILE (or a prepared folder) to evaluate it on"
        )


def eval_data(run, data: str | None, field: str | None = None, unknown_token=None):
    """(prepared data, split) a language-model run is evaluated on: its own validation split;
    else `data`: a prepared folder (its val split, or train when val is empty) or raw data,
    all of it, encoded with the run's tokenizer.

    Args:
        run: an `api.LoadedRun`.
    """
    from lmforge.data.corpus import open_source
    from lmforge.presets import tokenizer_path

    require_data(run, data)
    if data is None:
        return PreparedData(run.data["path"]), "val"
    if is_prepared(data):
        found = prepared_with(data, tokenizer_path(run.folder))
        return found, "val" if found.num_tokens("val") > 0 else "train"
    pcfg = PrepareConfig(
        data=data,
        tokenizer=str(tokenizer_path(run.folder)),
        field=field,
        val_fraction=0.0,
        unknown_token=unknown_token,
    )
    return _prepare_for_eval(pcfg, open_source(data, field=field)), "train"
