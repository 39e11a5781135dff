"""Hugging Face folders in and out: parity with transformers' GPT-2 on tiny random weights,
GPT-2 tokenizer ids, export that transformers loads, name resolution, and refused inputs."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.errors import CheckpointError, ConfigError
from lmforge.generation.generate import generate
from lmforge.interop.hf import (
    config_from_hf,
    convert,
    from_hf_state_dict,
    load_hf_model,
    read_hf_weights,
    to_hf_state_dict,
    write_hf_folder,
    write_lmforge_folder,
)
from lmforge.models.bert import BertConfig, BertMaskedLM, BertTextClassifier
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.tokenizers.base import train_tokenizer

transformers = pytest.importorskip("transformers")

UNICODE = (
    "Grüße aus Köln! naïve café, Ελληνικά, русский текст, 日本語のテキスト, 한국어, עברית, "
    "emoji 😀👍🏽👩‍👩‍👧, math ∑∫√∞≠, tabs\tand  double  spaces\n\nnew paragraph; it's we'll "
    "they'd I'M 12345 3.14 $5 #tag @user <|endoftext|> e\u0301 (combining) \u200b zero-width"
)
CORPUS = [UNICODE, "The quick brown fox jumps over the lazy dog. " * 8, "def f(x):\n    return x\n"]


def tiny_reference(vocab_size: int = 300, eos: int | None = 0):
    """A transformers GPT2LMHeadModel with non-trivial LayerNorms and biases."""
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(std=0.1).add_(1.0 if name.endswith("weight") else 0.0)
            elif "wte" in name:
                p.normal_(std=0.3)  # peakier distributions: greedy has no near-ties
    return model


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", CORPUS * 5, vocab_size=300)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, bpe):
    """A Hugging Face GPT-2 folder as save_pretrained writes it, with vocab.json + merges.txt."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    reference = tiny_reference(eos=bpe.eos_id)
    reference.save_pretrained(folder)
    bpe.tokenizer.model.save(str(folder))  # GPT-2's own files: vocab.json + merges.txt
    return folder


@pytest.fixture(scope="module")
def reference(hf_folder):
    return transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()


def test_logits_match_transformers(hf_folder, reference):
    model = lmforge.load(hf_folder)
    assert model.config.activation == "gelu_tanh" and model.config.num_layers == 2
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        expected = reference(ids).logits
        assert (model(ids) - expected).abs().max().item() <= 1e-4
        mask = torch.ones(2, 32, dtype=torch.long)
        mask[1, :7] = 0  # left padding: transformers needs the positions spelled out
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = reference(ids, attention_mask=mask, position_ids=positions).logits
        ours = model(ids, mask.bool())
    assert (ours[0] - expected[0]).abs().max().item() <= 1e-4
    assert (ours[1, 7:] - expected[1, 7:]).abs().max().item() <= 1e-4


def test_greedy_20_tokens_match_transformers(hf_folder, reference, bpe):
    model = lmforge.load(hf_folder)
    for prompt in ([5, 17, 42], [100, 3, 9, 250, 7, 1]):
        ours = [int(t) for t in generate(model, prompt, 20, temperature=0)]
        ids = torch.tensor([prompt])
        theirs = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=bpe.eos_id,
        )[0, len(prompt) :].tolist()
        assert len(ours) == 20 and ours == theirs


def test_batched_left_padded_greedy_matches_transformers(hf_folder, reference, bpe):
    model = lmforge.load(hf_folder)
    prompts = [[5, 17, 42], [100, 3, 9, 250, 7, 1], [8]]
    ours = torch.stack(list(generate(model, prompts, 12, temperature=0, left_pad=True)), 1)
    width = max(map(len, prompts))
    ids = torch.tensor([[bpe.eos_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    theirs = reference.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=bpe.eos_id,
    )[:, width:]
    assert torch.equal(ours, theirs)


def test_gpt2_byte_level_bpe_ids_match_transformers(hf_folder):
    theirs = transformers.GPT2TokenizerFast.from_pretrained(hf_folder)  # vocab.json + merges.txt
    assert theirs.vocab_size == 300
    ours = lmforge.load_tokenizer(hf_folder)  # vocab.json + merges.txt
    assert ours.kind == "bpe" and ours.eos_id == theirs.eos_token_id
    ids = ours.encode(UNICODE)
    assert ids == theirs(UNICODE)["input_ids"]
    assert ours.decode(ids) == UNICODE == theirs.decode(ids)


def test_tokenizer_json_written_by_transformers_gives_the_same_ids(hf_folder, tmp_path):
    theirs = transformers.GPT2TokenizerFast.from_pretrained(hf_folder)
    theirs.save_pretrained(tmp_path)  # tokenizer.json, as on the hub
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    ours = lmforge.load_tokenizer(tmp_path)
    assert ours.kind == "bpe" and ours.eos_id == theirs.eos_token_id == ours.pad_id
    assert ours.encode(UNICODE) == theirs(UNICODE)["input_ids"]


def test_export_loads_in_transformers_with_the_same_logits(hf_folder, tmp_path):
    ours = tmp_path / "ours"
    back = tmp_path / "back"
    convert(hf_folder, "lmforge", ours)
    assert json.loads((ours / "config.json").read_text())["family"] == "gpt"
    assert (ours / "tokenizer").is_dir() and (ours / "model.safetensors").is_file()
    convert(ours, "hf", back)
    model = lmforge.load(ours)
    exported = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (model(ids) - exported(ids).logits).abs().max().item() <= 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(back)
    assert tokenizer(UNICODE)["input_ids"] == lmforge.load_tokenizer(ours).encode(UNICODE)
    pipe = transformers.pipeline("text-generation", model=str(back), tokenizer=tokenizer)
    out = pipe("The quick brown", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The quick brown")


def test_pytorch_model_bin_and_bare_base_model_keys(hf_folder, tmp_path, reference):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(hf_folder / "config.json", folder)
    # GPT2Model's keys ("h.0.attn.c_attn.weight"), as on the hub, in a pickle-free .bin
    state = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items()}
    state.pop("lm_head.weight")
    for i in range(2):  # old checkpoints also store the causal mask as buffers
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    ids = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        assert (load_hf_model(folder)(ids) - reference(ids).logits).abs().max().item() <= 1e-4


def test_generate_text_on_a_hugging_face_folder(hf_folder):
    text = lmforge.generate_text(hf_folder, "The quick", max_new_tokens=8, temperature=0)
    again = lmforge.generate_text(hf_folder, "The quick", max_new_tokens=8, temperature=0)
    assert isinstance(text, str) and text == again


def test_to_hf_state_dict_round_trips():
    model = GPTCausalLM(GPTConfig(vocab_size=50, max_seq_len=16, embed_dim=32, ffn_dim=64))
    theirs = to_hf_state_dict(model, "gpt2")
    assert theirs["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    back = from_hf_state_dict(theirs, model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key


def test_config_round_trip_and_refusals():
    hf = transformers.GPT2Config(n_layer=3, n_embd=48, n_head=4, n_positions=64).to_dict()
    config = config_from_hf(hf)
    assert (config.num_layers, config.embed_dim, config.ffn_dim) == (3, 48, 192)
    assert config.position == "learned" and config.tie_embeddings and config.dropout == 0.1
    with pytest.raises(ConfigError, match="position='rotary'"):
        to_hf_state_dict(GPTCausalLM(GPTConfig(position="rotary")))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf({**hf, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(CheckpointError, match="model_type 'gemma'.*gpt2, gpt_neox, llama"):
        config_from_hf({**hf, "model_type": "gemma"})


# ---------------------------------------------------------------- names -> folders


def test_name_resolves_through_models_dir_then_hf_cache(hf_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--distilbert--distilgpt2" / "snapshots" / "abc123"
    shutil.copytree(hf_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert lmforge.load("distilgpt2").config.embed_dim == 32  # the cached snapshot, not random
    assert lmforge.load("distilbert/distilgpt2").config.embed_dim == 32
    assert lmforge.load_tokenizer("distilgpt2").vocab_size == 300
    models = tmp_path / "models"
    shutil.copytree(hf_folder, models / "my-gpt")
    monkeypatch.setenv("LMFORGE_MODELS_DIR", str(models))
    assert lmforge.load("my-gpt").config.num_layers == 2
    assert lmforge.load("gpt-baby").config.embed_dim == 128  # a preset without weights: random


def test_a_name_found_nowhere_else_is_downloaded_when_online(hf_folder, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LMFORGE_MODELS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []

    def fake_download(repo_id, allow_patterns):  # what the hub would put in the cache
        calls.append((repo_id, allow_patterns))
        folder = tmp_path / "hub" / "snapshot"
        if not folder.exists():
            shutil.copytree(hf_folder, folder, ignore=shutil.ignore_patterns("model.safetensors"))
        if "pytorch_model.bin" in allow_patterns:  # an old repo: weights as .bin only
            state = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).state_dict()
            torch.save(state, folder / "pytorch_model.bin")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = lmforge.load("distilgpt2")
    assert model.config.embed_dim == 32
    assert [repo for repo, _ in calls] == ["distilbert/distilgpt2"] * 2  # safetensors, then .bin
    assert {"config.json", "model.safetensors", "vocab.json"} <= set(calls[0][1])


def test_unknown_name_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("LMFORGE_MODELS_DIR", raising=False)
    for name in ("no-such-model", "distilgpt2"):
        with pytest.raises(CheckpointError) as err:
            lmforge.load(name)
        message = str(err.value)
        assert "\n" not in message and "LMFORGE_MODELS_DIR" in message
        assert str(tmp_path / "hub") in message and "HF_HUB_OFFLINE" in message


# ---------------------------------------------------------------- refused inputs


class _Payload:
    """Unpickling this would create a file: proof that no pickled code ever runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_code_is_refused_and_never_run(hf_folder, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(hf_folder / "config.json", folder)
    marker = tmp_path / "pwned"
    torch.save({"wte.weight": torch.zeros(2), "x": _Payload(marker)}, folder / "pytorch_model.bin")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="full pickle loading") as err:
        read_hf_weights(folder)
    assert "\n" not in str(err.value)
    with open(folder / "pytorch_model.bin", "wb") as f:  # a bare (non-zip) pickle too
        pickle.dump({"x": _Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="full pickle loading|not a readable"):
        read_hf_weights(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_config", "config.json"),
        ("no_weights", "no weights"),
        (
            "gemma",
            "model_type 'gemma' is not supported; supported: gpt2, gpt_neox, llama, mistral, "
            "qwen2, qwen3, bert",
        ),
        ("big_vocab", "embeds only 300"),
        ("missing_weight", "lack"),
    ],
)
def test_broken_folders_raise_one_line(hf_folder, tmp_path, damage, message):
    folder = tmp_path / damage
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    if damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "gemma":
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    elif damage == "big_vocab":
        (folder / "vocab.json").unlink()
        big = train_tokenizer("bpe", CORPUS * 5, vocab_size=400)
        big.tokenizer.save(str(folder / "tokenizer.json"))
    elif damage == "missing_weight":
        from safetensors.torch import load_file, save_file

        state = load_file(folder / "model.safetensors")
        state.pop("transformer.h.1.ln_2.bias")
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises((CheckpointError, ConfigError), match=message) as err:
        lmforge.generate_text(folder, "The", max_new_tokens=2)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- export of what we train

SPEECH = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\tSpeak, speak.\n"


def _vary_norms_and_biases(model):
    """LayerNorm weights near 1 and biases away from 0, so a lost one changes the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(std=0.1).add_(1.0 if name.endswith("weight") else 0.0)
    return model.eval()


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_gpt_without_biases_and_char_tokenizer_export(tmp_path, position):
    """gpt-baby's switches (no biases, char tokenizer) in GPT-2's layout: zero biases, and a
    sinusoidal table stored as the learned one; transformers gives our logits and our ids."""
    char = train_tokenizer("char", SPEECH)
    config = GPTConfig(
        vocab_size=char.vocab_size, max_seq_len=48, embed_dim=32, num_heads=4, num_layers=2,
        ffn_dim=64, use_bias=False, position=position,
    )  # fmt: skip
    model = _vary_norms_and_biases(GPTCausalLM(config))
    write_lmforge_folder(model, char, tmp_path / "run")
    convert(tmp_path / "run", "hf", tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tokenizer(SPEECH[:40])["input_ids"]
    assert ids == char.encode(SPEECH[:40]) and tokenizer.decode(ids) == SPEECH[:40]
    with torch.no_grad():
        x = torch.tensor([ids])
        assert (model(x) - theirs(x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("task", ["mlm", "classify"])
def test_bert_tasks_export_to_their_bert_classes(tmp_path, task):
    """A BERT masked LM -> BertForMaskedLM, a classifier -> BertForSequenceClassification (with
    its label names); their tokenizer adds our [START] a [END] packing; lmforge reads it back."""
    wordpiece = train_tokenizer("wordpiece", [SPEECH] * 5, vocab_size=120)
    config = BertConfig(
        vocab_size=wordpiece.vocab_size, max_seq_len=32, embed_dim=32, num_heads=2,
        num_layers=2, ffn_dim=64, dropout=0.0,
    )  # fmt: skip
    if task == "mlm":
        model, auto = BertMaskedLM(config), transformers.AutoModelForMaskedLM
    else:
        model = BertTextClassifier(config, 3, labels=["bad", "meh", "good"])
        auto = transformers.AutoModelForSequenceClassification
    _vary_norms_and_biases(model)
    write_lmforge_folder(model, wordpiece, tmp_path / "run")
    convert(tmp_path / "run", "hf", tmp_path / "hf")
    theirs = auto.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["before we proceed any further", "hear me speak"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    packed = [wordpiece.bos_id, *wordpiece.encode(texts[1]), wordpiece.eos_id]
    assert batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist() == packed
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"].bool())
        logits = theirs(**batch).logits
        if task == "mlm":  # outputs at padded positions mean nothing
            real = batch["attention_mask"].bool()
            ours, logits = ours[real], logits[real]
        assert (ours - logits).abs().max().item() <= 1e-4
        back = lmforge.load(tmp_path / "hf")
        assert type(back) is type(model)
        assert (back(batch["input_ids"][:1]) - model(batch["input_ids"][:1])).abs().max() <= 1e-5
    if task == "classify":
        assert theirs.config.id2label == {0: "bad", 1: "meh", 2: "good"}
        assert back.labels == ["bad", "meh", "good"]


def test_every_reason_a_model_cannot_export_is_in_one_message(tmp_path):
    """gpt-tiny-wine's post-norm block, untied biased head and wide heads all at once; post-norm
    rotary, char-RNN and a classifier's extra layers each name their reason; nothing is
    written."""
    from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
    from lmforge.models.gpt import PRESETS

    char = train_tokenizer("char", SPEECH)
    wine = {**PRESETS["gpt-tiny-wine"]["config"], "vocab_size": char.vocab_size}
    wine.update(embed_dim=16, head_dim=16, ffn_dim=16)
    shakespeare = {**PRESETS["gpt-shakespeare"]["config"], "vocab_size": char.vocab_size}
    classifier = BertTextClassifier(BertConfig(vocab_size=char.vocab_size), extra_layers=1)
    cases = [
        (
            GPTCausalLM(GPTConfig(**wine)),
            ["norm_first=False", "tie_embeddings=False", "head_dim=16"],
        ),
        (  # a rotary GPT exports as gpt_neox, but not a post-norm one
            GPTCausalLM(GPTConfig(**{**shakespeare, "norm_first": False, "canon": 0})),
            ["norm_first=False", "position='rotary'", "gpt_neox"],
        ),
        (  # nor one with Canon layers (gpt-shakespeare's own)
            GPTCausalLM(GPTConfig(**shakespeare)),
            ["canon=4", "has no Canon layers (train with --canon 0)"],
        ),
        (CharRNNCausalLM(CharRNNConfig(vocab_size=char.vocab_size)), ["char_rnn", "architecture"]),
        (classifier, ["extra_layers=1"]),
    ]
    for model, reasons in cases:
        with pytest.raises(ConfigError) as err:
            write_hf_folder(model, char, tmp_path / "out")
        message = str(err.value)
        assert "\n" not in message and "--to lmforge" in message
        assert all(reason in message for reason in reasons), message
        assert not (tmp_path / "out").exists()


def test_model_types_come_from_the_families_tables():
    from lmforge.interop import hf

    llama = {t: "llama" for t in ("llama", "mistral", "qwen2", "qwen3")}
    assert hf.model_types() == {"gpt2": "gpt", "gpt_neox": "gpt", **llama, "bert": "bert"}
    assert hf.MODEL_TYPES == hf.model_types()  # the old name still reads


def test_a_new_table_is_all_a_family_needs(monkeypatch):
    """A table with separate q/k/v of unequal sizes (as grouped-query attention stores them),
    no transposes and an untied head round-trips through the one applier."""
    from lmforge.interop import hf
    from lmforge.models import gpt

    layer = "model.layers.{i}."
    weights = {
        "backbone.embed.token.weight": "model.embed.weight",
        "backbone.embed.position.weight": "model.pos.weight",
        "backbone.blocks.{i}.attn_norm.weight": layer + "norm1.weight",
        "backbone.blocks.{i}.attn_norm.bias": layer + "norm1.bias",
        "backbone.blocks.{i}.attn.qkv.weight": tuple(layer + f"{n}.weight" for n in "qkv"),
        "backbone.blocks.{i}.attn.qkv.bias": tuple(layer + f"{n}.bias" for n in "qkv"),
        "backbone.blocks.{i}.attn.out.weight": layer + "o.weight",
        "backbone.blocks.{i}.attn.out.bias": layer + "o.bias",
        "backbone.blocks.{i}.ffn_norm.weight": layer + "norm2.weight",
        "backbone.blocks.{i}.ffn_norm.bias": layer + "norm2.bias",
        "backbone.blocks.{i}.ffn.up.weight": layer + "up.weight",
        "backbone.blocks.{i}.ffn.up.bias": layer + "up.bias",
        "backbone.blocks.{i}.ffn.down.weight": layer + "down.weight",
        "backbone.blocks.{i}.ffn.down.bias": layer + "down.bias",
        "backbone.final_norm.weight": "model.norm.weight",
        "backbone.final_norm.bias": "model.norm.bias",
        "head.weight": "lm_head.weight",
        "head.bias": "lm_head.bias",
    }
    table = dict(
        config={"embed_dim": "hidden_size", "num_heads": "heads", "num_layers": "layers"},
        architecture="ToyForCausalLM",
        base_prefix="model.",
        weights=weights,
        split={
            "backbone.blocks.{i}.attn.qkv.weight": ("num_heads",) * 3,
            "backbone.blocks.{i}.attn.qkv.bias": ("num_heads",) * 3,
        },
        tied={"head.weight": "backbone.embed.token.weight"},
    )
    monkeypatch.setitem(gpt.HF_NAMES, "toy", table)
    hf.model_types.cache_clear()
    monkeypatch.setattr(hf, "model_types", lambda: {"gpt2": "gpt", "toy": "gpt"})
    model = GPTCausalLM(
        GPTConfig(vocab_size=40, max_seq_len=8, embed_dim=16, num_heads=2, tie_embeddings=False)
    )
    theirs = to_hf_state_dict(model, "toy")
    assert theirs["model.layers.1.k.weight"].shape == (16, 16)
    assert torch.equal(theirs["model.layers.0.v.bias"], model.backbone.blocks[0].attn.qkv.bias[32:])
    back = from_hf_state_dict(theirs, model.config, "toy")
    assert back.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key
    del theirs["model.layers.1.q.weight"]
    with pytest.raises(CheckpointError, match="lack 'model.layers.1.q.weight'"):
        from_hf_state_dict(theirs, model.config, "toy")
