"""Llama-style decoders: causality, KV-cache and engine decoding, grouped-query caches, the
sliding window, rotary scaling against transformers' rules, config checks and presets."""

import dataclasses
import json

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generation.engine import Engine, SamplingParams
from lmforge.layers import cpu_kernels
from lmforge.layers.embeddings import rotary_inv_freq
from lmforge.models.llama import PRESETS, LlamaBackbone, LlamaCausalLM, LlamaConfig

TINY = dict(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2)
VARIANTS = {
    "gqa": {},
    "mha-untied": dict(num_kv_heads=4, tie_embeddings=False),
    "qwen2-bias": dict(qkv_bias=True),
    "qwen3-qk-norm": dict(qk_norm=True, head_dim=16),
    "mistral-window": dict(sliding_window=4),
    "llama3-rope": dict(rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=8),
}


def tiny_llama(**overrides) -> LlamaCausalLM:
    return LlamaCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def ids():
    return torch.randint(0, 50, (2, 12))


def test_shapes_and_backbone(ids):
    model = tiny_llama()
    assert model(ids).shape == (2, 12, 50)
    assert LlamaBackbone(model.config)(ids).shape == (2, 12, 32)
    assert model.family == model.backbone.family == "llama"
    # one rotary table serves every block
    assert model.backbone.blocks[0].attn.rotary is model.backbone.blocks[1].attn.rotary


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_future_tokens_do_not_change_earlier_logits(ids, variant):
    model = tiny_llama(**VARIANTS[variant])
    other = ids.clone()
    other[:, -1] = (ids[:, -1] + 1) % 50
    torch.testing.assert_close(model(ids)[:, :-1], model(other)[:, :-1])


def test_attention_dropout_replaces_dropout_on_the_probabilities_only():
    block = tiny_llama(dropout=0.1, attention_dropout=0.0).backbone.blocks[0]
    assert block.attn.dropout == 0.0 and block.dropout.p == 0.1
    assert tiny_llama(dropout=0.1).backbone.blocks[0].attn.dropout == 0.1


def test_sliding_window_hides_tokens_further_back():
    model = tiny_llama(sliding_window=4, num_layers=1)
    ids = torch.randint(0, 50, (1, 10))
    other = ids.clone()
    other[:, 0] = (ids[:, 0] + 1) % 50
    # one layer: position 4 and later see positions 1.. only, so token 0 cannot reach them
    torch.testing.assert_close(model(ids)[:, 4:], model(other)[:, 4:])
    assert not torch.allclose(model(ids)[:, 3], model(other)[:, 3])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_steps_equal_the_full_forward(ids, variant):
    model = tiny_llama(**VARIANTS[variant])
    state = model.init_state(2)
    logits, state = model.step(ids[:, :5], state)  # prefill
    parts = [logits]
    for t in range(5, 12):
        logits, state = model.step(ids[:, t : t + 1], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), model(ids), atol=1e-5, rtol=0)
    assert state.caches[0].k.shape[1] == model.config.num_kv_heads  # cached at key/value size


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_engine_rows_equal_the_full_forward(variant):
    model = tiny_llama(**VARIANTS[variant])
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaky logits: greedy has no near-ties
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    engine = Engine(model, slots=3, prefill_chunk=4)
    handles = [engine.submit(p, SamplingParams(max_new_tokens=8, temperature=0)) for p in prompts]
    engine.run()
    D = model.backbone.blocks[0].attn.head_dim
    assert engine.state[0].k.shape == (3, model.config.num_kv_heads, 16, D)  # (slots, KV, L, D)
    for prompt, handle in zip(prompts, handles):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                seq.append(int(model(torch.tensor([seq[-16:]]))[0, -1].argmax()))
        assert handle.tokens == seq[len(prompt) :]


def test_left_padding_leaves_real_tokens_unchanged():
    model = tiny_llama(sliding_window=5)
    real = torch.randint(0, 50, (1, 6))
    padded = torch.cat([torch.full((1, 3), 7), real], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    torch.testing.assert_close(model(padded, mask)[:, 3:], model(real), atol=1e-5, rtol=0)


def test_step_and_forward_refuse_to_pass_max_seq_len():
    model = tiny_llama()
    state = model.init_state(1)
    _, state = model.step(torch.zeros(1, 16, dtype=torch.long), state)
    with pytest.raises(ConfigError, match="init_state"):
        model.step(torch.zeros(1, 1, dtype=torch.long), state)
    with pytest.raises(ConfigError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_falls_over_30_adamw_steps():
    model = tiny_llama(num_layers=1).train()
    seq = torch.arange(13).repeat(2, 1) % 7
    batch = {"token_ids": seq[:, :-1], "labels": seq[:, 1:]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(batch).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert model.loss(batch).item() < 0.5 * first


def test_tied_and_untied_heads_and_grouped_sizes():
    tied = tiny_llama()
    assert tied.head.weight is tied.backbone.embed.weight and tied.head.bias is None
    untied = tiny_llama(tie_embeddings=False)
    assert untied.num_params() == tied.num_params() + 50 * 32
    attn = tied.backbone.blocks[0].attn  # q: 4 heads of 8, k and v: 2 heads of 8
    assert attn.qkv.weight.shape == (32 + 16 + 16, 32) and attn.qkv.bias is None
    assert tiny_llama(qkv_bias=True).backbone.blocks[0].attn.qkv.bias.shape == (64,)
    assert tiny_llama(qkv_bias=True).backbone.blocks[0].attn.out.bias is None


@pytest.mark.parametrize(
    "scaling",
    [
        dict(rope_type="linear", factor=4.0),
        dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ],
)
def test_rotary_scaling_matches_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        rope_parameters={"rope_theta": 500000.0, **scaling},
    )
    theirs, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    ours = rotary_inv_freq(
        64,
        500000.0,
        scaling["rope_type"],
        scaling["factor"],
        scaling.get("low_freq_factor", 1.0),
        scaling.get("high_freq_factor", 4.0),
        scaling.get("original_max_position_embeddings", 8192),
    )
    torch.testing.assert_close(ours, theirs.float(), atol=0, rtol=1e-6)
    assert not torch.allclose(ours, rotary_inv_freq(64, 500000.0))  # the rule changed something


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=4, num_kv_heads=3), "num_heads=4 do not divide into num_kv_heads=3"),
        (dict(rope_scaling="yarn"), "rope_scaling='yarn' is unknown; use one of none"),
        (dict(embed_dim=30), "not divisible by num_heads"),
        (dict(head_dim=6, num_heads=4), None),  # fine: head_dim lifts the rule
        (dict(head_dim=7), "even head_dim"),
        (dict(num_kv_heads=0), "num_kv_heads=0"),
        (dict(sliding_window=0), "sliding_window=0"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(rope_scaling="llama3", rope_high_freq_factor=1.0), "rope_high_freq_factor"),
        (dict(dropout=1.0), "dropout=1.0"),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    if message is None:
        LlamaConfig(**{**TINY, **overrides})
        return
    with pytest.raises(ConfigError, match=message) as err:
        LlamaConfig(**{**TINY, **overrides})
    assert "\n" not in str(err.value)


def test_config_round_trips_through_a_dict():
    config = LlamaConfig(**PRESETS["qwen3-0.6b"]["config"])
    assert LlamaConfig(**dataclasses.asdict(config)) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_complete(name):
    preset = PRESETS[name]
    assert isinstance(preset["about"], str) and "\n" not in preset["about"]
    assert {"batch_size", "block_size", "lr", "warmup_steps", "weight_decay", "dropout"} <= set(
        preset["train"]
    )
    LlamaConfig(**preset["config"])


def test_shakespeare_preset_matches_the_gpt_one_in_size():
    from lmforge.models.gpt import PRESETS as GPT_PRESETS
    from lmforge.models.gpt import GPTCausalLM, GPTConfig

    llama = LlamaCausalLM(LlamaConfig(**PRESETS["llama-shakespeare"]["config"]))
    gpt = GPTCausalLM(GPTConfig(**GPT_PRESETS["gpt-shakespeare"]["config"]))
    assert abs(llama.num_params() - gpt.num_params()) < 0.05 * gpt.num_params()
    ids = torch.randint(0, 65, (1, 128))
    assert llama(ids).shape == (1, 128, 65)


def test_int8_weights_decode_like_float_ones():
    from lmforge.generation.generate import generate
    from lmforge.layers.quant import quantize_

    model = tiny_llama()
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaky logits: int8 rounding keeps the argmax
    expected = [int(t) for t in generate(model, [1, 2, 3], 6, temperature=0)]
    quantize_(model, "int8")
    assert model.init_slots(1, 8)[0].k.dtype == torch.float32
    assert [int(t) for t in generate(model, [1, 2, 3], 6, temperature=0)] == expected


def test_generate_sizes_the_cache_for_the_tokens_it_will_see(monkeypatch):
    from lmforge.generation.generate import generate
    from lmforge.layers.attention import SlotKVCache

    seen = []
    monkeypatch.setattr(SlotKVCache, "__init__", _spy(SlotKVCache.__init__, seen))
    model = tiny_llama(max_seq_len=32768)  # Qwen's context: a full cache would be 32k long
    assert len(list(generate(model, [[1, 2, 3], [4, 5]], 5, temperature=0, left_pad=True))) == 5
    # one cache per layer of 3 prompt + 5 new positions (the engine's thread probe adds 2-long ones)
    assert seen.count(8) == 2 and max(seen) == 8


def _spy(init, seen):
    def wrapped(self, slots, heads, max_len, head_dim, dtype, device):
        seen.append(max_len)
        init(self, slots, heads, max_len, head_dim, dtype, device)

    return wrapped


# ---------------------------------------------------------------- Hugging Face parity

HF_SHAPE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)
# name -> (transformers config class name, its arguments)
HF_VARIANTS = {
    "llama-gqa-tied-llama3": (
        "LlamaConfig",
        dict(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
    ),
    "llama-untied-linear": (
        "LlamaConfig",
        dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    ),
    "mistral-window": ("MistralConfig", dict(sliding_window=5)),
    "qwen2": ("Qwen2Config", dict(rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    "qwen3-head-dim": ("Qwen3Config", dict(head_dim=32)),
}


def hf_reference(variant: str):
    """A tiny transformers causal LM with non-trivial norms and biases and peaky logits."""
    transformers = pytest.importorskip("transformers")
    name, extra = HF_VARIANTS[variant]
    config = getattr(transformers, name)(**HF_SHAPE, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" in key:
                p.normal_(1.0, 0.1)
            elif key.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "embed_tokens" in key or "lm_head" in key:
                p.normal_(0.0, 0.3)  # peakier distributions: greedy has no near-ties
    return model


@pytest.fixture(scope="module", params=sorted(HF_VARIANTS))
def hf_pair(request, tmp_path_factory):
    """(variant, folder as save_pretrained writes it, the transformers model)."""
    torch.manual_seed(0)
    reference = hf_reference(request.param)
    folder = tmp_path_factory.mktemp("hf") / request.param
    reference.save_pretrained(folder)
    return request.param, folder, reference


def test_logits_match_transformers(hf_pair):
    import lmforge

    variant, folder, reference = hf_pair
    model = lmforge.load(folder)
    assert model.family == "llama" and model.config.num_kv_heads == 2
    ids = torch.randint(0, 300, (2, 24))  # longer than the window and the llama3 context
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() <= 1e-4


def test_greedy_tokens_match_transformers_generate(hf_pair):
    import lmforge
    from lmforge.generation.generate import generate

    variant, folder, reference = hf_pair
    model = lmforge.load(folder)
    for prompt in ([5, 17, 42], [100, 3, 9, 250, 7, 1, 44, 2]):
        ours = [int(t) for t in generate(model, prompt, 16, temperature=0)]
        ids = torch.tensor([prompt])
        theirs = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert ours == theirs


def test_export_round_trips_through_transformers(hf_pair, tmp_path):
    import lmforge
    from lmforge.interop.hf import write_hf_folder
    from lmforge.tokenizers.base import train_tokenizer

    transformers = pytest.importorskip("transformers")
    variant, folder, reference = hf_pair
    model = lmforge.load(folder)
    tok = train_tokenizer("bpe", ["the cat sat on the mat. " * 20], vocab_size=300)
    write_hf_folder(model, tok, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == json.loads((folder / "config.json").read_text())["model_type"]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 300, (1, 24))
    with torch.no_grad():
        assert (again(ids).logits - reference(ids).logits).abs().max().item() <= 1e-4
    assert (lmforge.load(tmp_path / "out").state_dict().keys()) == model.state_dict().keys()


def test_older_rope_theta_and_rope_scaling_fields_read_the_same(tmp_path):
    import lmforge

    torch.manual_seed(0)
    reference = hf_reference("llama-gqa-tied-llama3")
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")  # transformers 4's spelling: theta outside, "type"
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in params.items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = lmforge.load(tmp_path)
    assert model.config.rope_scaling == "llama3" and model.config.rope_base == 500000.0
    ids = torch.randint(0, 300, (1, 24))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() <= 1e-4


def test_our_models_export_to_the_layout_their_switches_name(tmp_path):
    from lmforge.interop.hf import write_hf_folder
    from lmforge.tokenizers.base import train_tokenizer

    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer("char", ["abcdefgh"])
    expected = {
        "llama": {},
        "mistral": dict(sliding_window=4),
        "qwen2": dict(qkv_bias=True),
        "qwen3": dict(qk_norm=True, head_dim=16),
    }
    for model_type, switches in expected.items():
        model = tiny_llama(vocab_size=tok.vocab_size, **switches)
        write_hf_folder(model, tok, tmp_path / model_type)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / model_type).eval()
        assert hf.config.model_type == model_type
        ids = torch.randint(0, tok.vocab_size, (1, 12))
        with torch.no_grad():
            assert (hf(ids).logits - model(ids)).abs().max().item() <= 1e-4
    with pytest.raises(ConfigError, match="only Qwen3 norms queries and keys") as err:
        write_hf_folder(tiny_llama(qk_norm=True, qkv_bias=True), tok, tmp_path / "both")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("kv-heads", "num_heads=4 do not divide into num_kv_heads=3 groups"),
        ("rope-type", "rope type 'yarn' is not supported; lmforge knows default, linear, llama3"),
        ("missing-weight", "the weights lack 'model.layers.1.mlp.up_proj.weight'"),
        ("model-type", "model_type 'gemma' is not supported; supported: gpt2, gpt_neox, llama"),
    ],
)
def test_bad_folders_are_one_line_exit_2(tmp_path, capsys, damage, message):
    from safetensors.torch import load_file, save_file

    from lmforge.cli.main import main
    from lmforge.tokenizers.base import train_tokenizer

    torch.manual_seed(0)
    hf_reference("qwen2").save_pretrained(tmp_path)
    train_tokenizer("bpe", ["the cat sat. " * 20], vocab_size=300).tokenizer.save(
        str(tmp_path / "tokenizer.json")
    )
    config = json.loads((tmp_path / "config.json").read_text())
    if damage == "kv-heads":
        config["num_key_value_heads"] = 3
    elif damage == "rope-type":
        config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
    elif damage == "model-type":
        config["model_type"] = "gemma"
    else:
        weights = load_file(tmp_path / "model.safetensors")
        del weights["model.layers.1.mlp.up_proj.weight"]
        save_file(weights, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    capsys.readouterr()  # transformers' progress bar
    code = main(["sample", str(tmp_path), "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("lmforge: error:") and "\n" not in err, err
    assert message in err


def test_names_resolve_and_init_from_fine_tunes(tmp_path, monkeypatch, capsys):
    """qwen2.5-0.5b resolves through the Hugging Face cache as gpt2 does (here a tiny random
    Qwen2 under that repo id), and `train --init-from` fine-tunes it with its own tokenizer."""
    import lmforge
    from lmforge.cli.main import main
    from lmforge.tokenizers.base import train_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("LMFORGE_MODELS_DIR", raising=False)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc"
    torch.manual_seed(0)
    hf_reference("qwen2").save_pretrained(snapshot)
    text = "Why is the sky blue? Light scatters off the air.\n" * 40
    train_tokenizer("bpe", [text], vocab_size=300).tokenizer.save(str(snapshot / "tokenizer.json"))
    assert lmforge.load("qwen2.5-0.5b").config.embed_dim == 64  # the snapshot, not 896 wide
    data = tmp_path / "notes.txt"
    data.write_text(text)
    for i, source in enumerate(["qwen2.5-0.5b", str(snapshot)]):  # a name, a folder
        out = tmp_path / f"ft{i}"
        argv = ["train", "--init-from", source, "--data", str(data), "--block-size", "16"]
        argv += ["--max-steps", "2", "--threads", "1", "--out", str(out)]
        capsys.readouterr()
        assert main(argv) == 0, capsys.readouterr().err
        assert json.loads((out / "config.json").read_text())["family"] == "llama"
    assert main(["sample", str(out), "--prompt", "Why", "--max-new-tokens", "4"]) == 0


def test_export_keeps_the_tokenizer_metadata(tmp_path):
    import lmforge
    from lmforge.interop.hf import write_hf_folder
    from tests.tokenizers.test_base import llama_style_folder

    llama_style_folder(tmp_path / "tok")
    tok = lmforge.load_tokenizer(tmp_path / "tok")
    write_hf_folder(tiny_llama(vocab_size=tok.vocab_size), tok, tmp_path / "out")
    again = lmforge.load_tokenizer(tmp_path / "out")
    assert again.metadata() == tok.metadata() and again.eos_ids == tok.eos_ids
    assert again.special_tokens() == tok.special_tokens()
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == list(tok.eos_ids)


# ---------------------------------------------------------------- the fused decode step

requires_kernels = pytest.mark.skipif(
    cpu_kernels.decode_stack() is None, reason="lmforge's kernels do not build here (no c++)"
)


@requires_kernels
@pytest.mark.parametrize("variant", sorted(VARIANTS) + ["int8"])
def test_fused_decode_step_equals_the_blocks(variant):
    """stack_step with Llama's decode_params (RMSNorm, GQA, q/k norms, a window, SwiGLU) gives
    the Python blocks' output and writes the same keys and values, rows at different places."""
    from lmforge.layers.attention import SlotBatch, SlotView
    from lmforge.layers.layout import decode_layout_, stack_step
    from lmforge.layers.quant import quantize_
    from lmforge.models.llama import decode_params

    torch.manual_seed(0)
    model = tiny_llama(**VARIANTS.get(variant, {}))
    if variant == "int8":
        quantize_(model, "int8")
    decode_layout_(model)
    mine, theirs = model.init_slots(8, 16), model.init_slots(8, 16)
    with torch.inference_mode():
        for caches in (mine, theirs):  # the same prompts in slots 1, 4, 6
            torch.manual_seed(1)
            for slot, length in ((1, 5), (4, 9), (6, 2)):
                model.step_slots(torch.randint(0, 50, (1, length)), caches, [slot], [0])
        blocks = model.backbone.blocks
        for rows, starts in (([1, 4, 6], [5, 9, 2]), ([4], [10]), ([0, 1, 2, 3], [0, 6, 0, 0])):
            batch = SlotBatch(mine, [(rows, starts, 1)], "cpu")
            x = torch.randn(len(rows), 32)
            fused = stack_step(blocks, x, mine, batch.groups[0], decode_params)
            assert fused is not None
            plain = x[None]
            for i, block in enumerate(blocks):
                plain = block(plain, None, SlotView(theirs[i], batch))
            torch.testing.assert_close(fused, plain[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.k, b.k, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.v, b.v, atol=1e-6, rtol=1e-5)


@requires_kernels
def test_engine_decodes_through_the_fused_step_with_the_same_tokens(monkeypatch):
    import lmforge.models.llama as llama

    model = tiny_llama(qk_norm=True, head_dim=16, sliding_window=6)
    with torch.no_grad():
        model.head.weight.mul_(20)
    calls = []
    real = llama.stack_step

    def spy(*args):
        out = real(*args)
        calls.append(out is not None)
        return out

    def decode(stack):
        monkeypatch.setattr(llama, "stack_step", stack)
        engine = Engine(model, slots=3, threads=1)
        params = SamplingParams(max_new_tokens=10, temperature=0, logprobs=2)
        handles = [engine.submit([i + 1] * (2 + 3 * i), params) for i in range(3)]
        engine.run()
        return [h.tokens for h in handles], [[t.logprob for t in h.logprobs] for h in handles]

    fused_tokens, fused_logprobs = decode(spy)
    plain_tokens, plain_logprobs = decode(lambda *a: None)
    assert any(calls) and fused_tokens == plain_tokens
    for a, b in zip(fused_logprobs, plain_logprobs):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)
