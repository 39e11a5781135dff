"""GPT: causality, the two attention paths, KV-cache decoding, loss, config checks, presets, and
parity with transformers' GPT2LMHeadModel through HF_NAMES."""

import dataclasses
import json

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models.gpt import HF_NAMES, PRESETS, GPTBackbone, GPTCausalLM, GPTConfig

TINY = dict(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64)


def tiny_gpt(**overrides) -> GPTCausalLM:
    return GPTCausalLM(GPTConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def ids():
    return torch.randint(0, 50, (2, 12))


def test_shapes_and_backbone(ids):
    model = tiny_gpt()
    assert model(ids).shape == (2, 12, 50)
    assert GPTBackbone(model.config)(ids).shape == (2, 12, 32)
    assert model.family == model.backbone.family == "gpt"


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_future_tokens_do_not_change_earlier_logits(ids, position, norm_first):
    model = tiny_gpt(position=position, norm_first=norm_first)
    other = ids.clone()
    other[:, -1] = (ids[:, -1] + 1) % 50
    torch.testing.assert_close(model(ids)[:, :-1], model(other)[:, :-1])


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_probability_capture_path_gives_the_same_logits(ids, position):
    model = tiny_gpt(position=position)
    fast = model(ids)
    for block in model.backbone.blocks:
        block.attn.capture_probs = True
    torch.testing.assert_close(model(ids), fast, atol=1e-5, rtol=0)
    probs = model.backbone.blocks[0].attn.last_probs  # (B, H, T, T)
    assert probs.shape == (2, 4, 12, 12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 12))
    assert probs.triu(diagonal=1).abs().max() == 0


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_kv_cache_steps_equal_the_full_forward(ids, position, norm_first):
    model = tiny_gpt(position=position, norm_first=norm_first)
    state = model.init_state(2)
    logits, state = model.step(ids[:, :5], state)  # prefill
    parts = [logits]
    for t in range(5, 12):
        logits, state = model.step(ids[:, t : t + 1], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), model(ids), atol=1e-5, rtol=0)


def test_step_and_forward_refuse_to_pass_max_seq_len():
    model = tiny_gpt()
    state = model.init_state(1)
    _, state = model.step(torch.zeros(1, 16, dtype=torch.long), state)
    with pytest.raises(ConfigError, match="init_state"):
        model.step(torch.zeros(1, 1, dtype=torch.long), state)
    with pytest.raises(ConfigError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_left_padding_with_rotary_positions_leaves_real_tokens_unchanged():
    model = tiny_gpt(position="rotary")  # relative positions: a shifted sequence scores the same
    real = torch.randint(0, 50, (1, 6))
    padded = torch.cat([torch.full((1, 3), 7), real], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    out = model(padded, mask)
    torch.testing.assert_close(out[:, 3:], model(real), atol=1e-5, rtol=0)


def test_padding_mask_hides_padded_keys():
    model = tiny_gpt()
    ids = torch.randint(0, 50, (1, 8))
    mask = torch.tensor([[True, True, False, False, True, True, True, True]])
    other = ids.clone()
    other[:, 2:4] = (ids[:, 2:4] + 1) % 50  # only the masked tokens differ
    real = mask[0]
    torch.testing.assert_close(model(ids, mask)[:, real], model(other, mask)[:, real])
    assert not torch.allclose(model(ids)[:, 4:], model(other)[:, 4:])  # unmasked, they matter


def test_loss_ignores_minus_100(ids):
    model = tiny_gpt()
    labels = torch.randint(0, 50, (2, 12))
    labels[:, -4:] = -100
    loss = model.loss({"token_ids": ids, "labels": labels})
    logits = model(ids)[:, :-4]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels[:, :-4].flatten())
    torch.testing.assert_close(loss, expected)


def test_loss_is_float32_under_bf16_autocast(ids):
    model = tiny_gpt()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss({"token_ids": ids, "labels": ids})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_loss_falls_over_30_adamw_steps():
    model = tiny_gpt(num_layers=1).train()
    seq = torch.arange(13).repeat(2, 1) % 7  # a tiny repeated pattern
    batch = {"token_ids": seq[:, :-1], "labels": seq[:, 1:]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(batch).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert model.loss(batch).item() < 0.5 * first


def test_init_follows_gpt2():
    model = GPTCausalLM(GPTConfig(embed_dim=256, num_heads=4, num_layers=8, ffn_dim=512))
    block = model.backbone.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.out.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(16)
    assert block.ffn.down.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert block.attn.qkv.bias.abs().max() == 0 and block.ffn.up.bias.abs().max() == 0


def test_tied_and_untied_heads():
    tied = tiny_gpt()
    assert tied.head.weight is tied.backbone.embed.token.weight and tied.head.bias is None
    untied = tiny_gpt(tie_embeddings=False)
    assert untied.head.weight is not untied.backbone.embed.token.weight
    assert untied.head.bias is not None  # use_bias and not tied
    assert untied.num_params() == tied.num_params() + 50 * 32 + 50


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(embed_dim=30, num_heads=4), "not divisible by num_heads"),
        (dict(num_layers=0), "num_layers=0"),
        (dict(vocab_size=-1), "vocab_size=-1"),
        (dict(head_dim=0), "head_dim=0"),
        (dict(activation="swish"), "activation='swish'"),
        (dict(position="alibi"), "position='alibi'"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(dropout=-0.1), "dropout=-0.1"),
        (dict(position="rotary", embed_dim=12, num_heads=4), "even head_dim"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        GPTConfig(**{**TINY, **overrides})
    assert "\n" not in str(err.value)


def test_head_dim_lifts_the_divisibility_rule():
    model = GPTCausalLM(GPTConfig(**{**TINY, "embed_dim": 30, "num_heads": 4, "head_dim": 8}))
    assert model(torch.randint(0, 50, (1, 5))).shape == (1, 5, 50)


def test_attention_dropout_replaces_dropout_on_the_probabilities_only():
    torch.manual_seed(0)
    model = tiny_gpt(dropout=0.1, attention_dropout=0.0).train()
    block = model.backbone.blocks[0]
    assert block.attn.dropout == 0.0  # SDPA's fused kernel while training
    assert block.attn_dropout.p == block.ffn.dropout.p == model.backbone.embed.dropout.p == 0.1
    assert tiny_gpt(dropout=0.1).backbone.blocks[0].attn.dropout == 0.1  # unset: as dropout
    ids = torch.randint(0, 50, (2, 12))
    assert not torch.equal(model(ids), model(ids))  # the residual dropout still draws
    model.eval()
    assert torch.equal(model(ids), model(ids))


def test_config_round_trips_through_a_dict():
    config = GPTConfig(**PRESETS["gpt-baby"]["config"])
    assert GPTConfig(**dataclasses.asdict(config)) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_complete(name):
    preset = PRESETS[name]
    assert isinstance(preset["about"], str) and "\n" not in preset["about"]
    assert {"batch_size", "block_size", "lr", "warmup_steps", "weight_decay", "dropout"} <= set(
        preset["train"]
    )
    GPTConfig(**preset["config"])


@pytest.mark.parametrize("name", ["gpt-tiny-wine", "gpt-baby", "gpt-shakespeare"])
def test_small_presets_build_and_run(name):
    config = GPTConfig(**PRESETS[name]["config"])
    model = GPTCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, config.max_seq_len))
    assert model(ids).shape == (1, config.max_seq_len, config.vocab_size)


def test_wine_preset_is_the_keras_model():
    model = GPTCausalLM(GPTConfig(**PRESETS["gpt-tiny-wine"]["config"]))
    # Embeddings, MHA (2 heads x 256 for q, k, v and the output), 2 LayerNorms, FFN, Dense head.
    expected = (10000 * 256 + 80 * 256) + (3 * (256 * 512 + 512) + 512 * 256 + 256)
    expected += 2 * 2 * 256 + (256 * 256 + 256) * 2 + (256 * 10000 + 10000)
    assert model.num_params() == expected


@pytest.mark.parametrize("name, count", [("gpt2", 124_439_808), ("distilgpt2", 81_912_576)])
def test_gpt2_parameter_counts(name, count):
    with torch.device("meta"):
        model = GPTCausalLM(GPTConfig(**PRESETS[name]["config"]))
    assert model.num_params() == count  # 124,439,808: GPT-2 small with tied embeddings


def _config_from_hf(hf_config) -> GPTConfig:
    table = HF_NAMES["gpt2"]
    values = {ours: getattr(hf_config, theirs) for ours, theirs in table["config"].items()}
    values["ffn_dim"] = values["ffn_dim"] or 4 * values["embed_dim"]
    values["activation"] = table["activations"][values["activation"]]
    return GPTConfig(**values, **table["fixed"])


def _weights_from_hf(theirs: dict, num_layers: int) -> dict:
    table = HF_NAMES["gpt2"]
    ours = {}
    for our_key, their_key in table["weights"].items():
        for i in range(num_layers) if "{i}" in our_key else [0]:
            tensor = theirs[their_key.format(i=i)]
            ours[our_key.format(i=i)] = tensor.T if our_key in table["transpose"] else tensor
    return ours


def test_parity_with_transformers_gpt2():
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    reference = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # give LayerNorms and biases non-trivial values
        for name, p in reference.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(std=0.1).add_(1.0 if name.endswith("weight") else 0.0)
    config = _config_from_hf(hf_config)
    assert config.activation == "gelu_tanh"
    model = GPTCausalLM(config).eval()
    model.load_state_dict(_weights_from_hf(reference.state_dict(), config.num_layers))
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        expected = reference(ids).logits
    assert (model(ids) - expected).abs().max().item() <= 1e-4


def test_int8_weights_keep_a_float_kv_cache():
    from lmforge.layers.quant import quantize_

    model = tiny_gpt()
    quantize_(model, "int8")
    assert model.head.weight.dtype == torch.int8  # the head is int8 now; the cache must not be
    caches = model.init_slots(2, 8)
    assert caches[0].k.dtype == torch.float32 and len(caches) == 2
    assert model.slot_bytes(2, 8) == 2 * 2 * 2 * 4 * 8 * 8 * 4  # k+v, layers, slots, H, L, D, fp32


@pytest.mark.parametrize(
    "switches",
    [
        dict(),  # gpt-shakespeare's: tied, no biases, exact GELU
        dict(tie_embeddings=False, activation="relu"),
        dict(use_bias=True, activation="gelu_tanh"),
    ],
)
def test_rotary_gpt_exports_as_gpt_neox_with_the_same_logits(tmp_path, switches):
    transformers = pytest.importorskip("transformers")
    import lmforge
    from lmforge.interop.hf import write_hf_folder
    from lmforge.tokenizers.base import train_tokenizer

    tok = train_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz"])
    config = {**TINY, "vocab_size": tok.vocab_size, "use_bias": False, **switches}
    model = tiny_gpt(**config, position="rotary")
    with torch.no_grad():  # non-trivial norms and biases: a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    write_hf_folder(model, tok, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.model_type == "gpt_neox"
    ids = torch.randint(0, tok.vocab_size, (2, 16))
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)).abs().max().item() <= 1e-4
        assert (lmforge.load(tmp_path)(ids) - model(ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(use_parallel_residual=True), "use_parallel_residual=True is not supported"),
        (dict(rotary_pct=0.25), "partial_rotary_factor is not supported"),
        (dict(rotary_emb_base=500), "rope_theta=500"),
    ],
)
def test_gpt_neox_folders_lmforge_cannot_run_exactly_are_refused(tmp_path, change, message):
    transformers = pytest.importorskip("transformers")
    import lmforge
    from lmforge.errors import CheckpointError

    config = transformers.GPTNeoXConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, use_parallel_residual=False, rotary_pct=1.0,
    )  # fmt: skip
    transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert lmforge.load(tmp_path).config.position == "rotary"  # as saved: it loads
    written.pop("rope_parameters")  # the older spelling, which these changes use
    (tmp_path / "config.json").write_text(json.dumps({**written, "rotary_pct": 1.0, **change}))
    with pytest.raises(CheckpointError, match=message) as err:
        lmforge.load(tmp_path)
    assert "\n" not in str(err.value)
