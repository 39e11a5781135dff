"""decode_layout_: the same weights, so the same outputs, the same saved file, still tied, and
training and int8 quantization still work; with the small-rows kernel (modules switch to their
small-rows subclass) and without it (weights stored column-major)."""

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from lmforge.layers import cpu_kernels, layout
from lmforge.layers.attention import SlotBatch, SlotView
from lmforge.layers.heads import LMHead
from lmforge.layers.layout import (
    SmallRowsLinear,
    SmallRowsLMHead,
    block_step,
    decode_layout_,
    stack_step,
    train_layout_,
)
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.run_folder import save_weights


def tiny(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)
    return GPTCausalLM(config).eval()


@pytest.fixture(params=["kernel", "column-major"])
def mode(request, monkeypatch):
    if request.param == "column-major":  # as where no compiler builds the kernel
        monkeypatch.setattr(layout, "_op", None)
        monkeypatch.setattr(layout, "small_linear", lambda: None)
    return request.param


def test_weights_keep_their_values_and_outputs(mode, tmp_path, monkeypatch):
    model, reference = tiny(), tiny()
    changed = decode_layout_(model)
    assert changed == 2 * 4 + 1  # qkv, out, up, down per block, and the (tied) head
    for (name, mine), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(mine, theirs), name
    qkv = model.backbone.blocks[0].attn.qkv
    if mode == "kernel":
        assert type(qkv) is SmallRowsLinear and type(model.head) is SmallRowsLMHead
        assert qkv.weight.is_contiguous()
    else:
        assert type(qkv) is nn.Linear and qkv.weight.t().is_contiguous()
        assert not qkv.weight.is_contiguous()
    assert model.head.weight is model.backbone.embed.token.weight  # still tied
    calls = []
    if mode == "kernel":  # count what reaches the kernel
        op = layout._op
        monkeypatch.setattr(layout, "_op", lambda x, *a: calls.append(x.shape[0]) or op(x, *a))
    with torch.no_grad():
        for shape in ((3, 9), (1, 1), (8, 1), (2, 4)):  # a prompt, and 1 to 8 rows
            ids = torch.randint(0, 50, shape)
            torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
    if mode == "kernel":  # 4 layers per block and the head, for the three few-row shapes only
        assert calls == [1] * 9 + [8] * 9 + [8] * 9
    assert decode_layout_(model) == 0  # already so
    save_weights(model, tmp_path / "a.safetensors")
    save_weights(reference, tmp_path / "b.safetensors")
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_layout_undoes_it(mode):
    model, reference = tiny(), tiny()
    changed = decode_layout_(model)
    assert train_layout_(model) == changed
    qkv = model.backbone.blocks[0].attn.qkv
    assert type(qkv) is nn.Linear and type(model.head) is LMHead
    assert qkv.weight.is_contiguous() and train_layout_(model) == 0
    assert model.head.weight is model.backbone.embed.token.weight
    ids = torch.randint(0, 50, (1, 5))
    torch.testing.assert_close(model(ids), reference(ids), atol=0, rtol=0)  # the same path


def test_training_and_int8_still_work_on_the_new_layout(mode):
    from lmforge.layers.quant import quantize_

    model, reference = tiny(1), tiny(1)
    decode_layout_(model)
    for rows in ((2, 8), (1, 3)):  # a batch, and a few rows (the kernel's reach, with grad)
        ids = torch.randint(0, 50, rows)
        for m in (model, reference):
            m.zero_grad()
            m.train()
            m(ids).logsumexp(-1).mean().backward()
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)
    model.eval(), reference.eval()
    quantize_(model, "int8")
    quantize_(reference, "int8")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- block_step (the fused block)

requires_kernels = pytest.mark.skipif(
    cpu_kernels.decode_stack() is None, reason="lmforge's kernels do not build here (no c++)"
)


def block_model(activation="gelu_tanh", use_bias=True, position="learned", quantize=False):
    torch.manual_seed(3)
    config = GPTConfig(
        vocab_size=50,
        max_seq_len=24,
        embed_dim=32,
        num_heads=4,
        num_layers=2,
        activation=activation,
        use_bias=use_bias,
        position=position,
    )
    model = GPTCausalLM(config).eval()
    if quantize:
        from lmforge.layers.quant import quantize_

        quantize_(model, "int8")
    decode_layout_(model)
    return model


def with_history(model, slots=8):
    """Slot caches where slots 1, 4 and 6 hold prompts of 5, 9 and 2 tokens (the Python block)."""
    caches = model.init_slots(slots, 24)
    torch.manual_seed(1)  # the same prompts at every call
    with torch.inference_mode():
        for slot, length in ((1, 5), (4, 9), (6, 2)):
            model.step_slots(torch.randint(0, 50, (1, length)), caches, [slot], [0])
    return caches


@requires_kernels
@pytest.mark.parametrize(
    "activation,use_bias,position,quantize",
    [
        ("gelu_tanh", True, "learned", False),  # GPT-2
        ("gelu", False, "rotary", False),  # gpt-shakespeare
        ("relu", True, "rotary", False),
        ("gelu_tanh", True, "learned", True),  # int8 weights
    ],
)
def test_block_step_equals_the_block(activation, use_bias, position, quantize):
    model = block_model(activation, use_bias, position, quantize)
    mine, theirs = with_history(model), with_history(model)
    torch.manual_seed(0)
    with torch.inference_mode():
        for rows, starts in (([1, 4, 6], [5, 9, 2]), ([4], [10]), ([0, 1, 2, 3], [0, 6, 0, 0])):
            batch = SlotBatch(mine, [(rows, starts, 1)], "cpu")
            x = torch.randn(len(rows), 32)
            for i, block in enumerate(model.backbone.blocks):
                fused = block_step(block, x, mine[i], batch.groups[0])
                assert fused is not None
                plain = block(x[None], None, SlotView(theirs[i], batch))[0]
                torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
                x = plain
    for a, b in zip(mine, theirs):  # the same keys and values written at the same places
        torch.testing.assert_close(a.k, b.k, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.v, b.v, atol=1e-6, rtol=1e-5)


@requires_kernels
def test_block_step_declines_what_it_cannot_run():
    model = block_model()
    caches = with_history(model, slots=10)
    batch = SlotBatch(caches, [([1], [5], 1)], "cpu")
    block, x = model.backbone.blocks[0], torch.randn(1, 32)
    with torch.inference_mode():
        assert block_step(block, x, caches[0], batch.groups[0]) is not None
        nine = SlotBatch(caches, [(list(range(9)), [0] * 9, 1)], "cpu")  # past the kernel's rows
        assert block_step(block, torch.randn(9, 32), caches[0], nine.groups[0]) is None
        block.attn.capture_probs = True  # inspect reads the probabilities
        assert block_step(block, x, caches[0], batch.groups[0]) is None
        block.attn.capture_probs = False
        handle = block.register_forward_hook(lambda *a: None)
        assert block_step(block, x, caches[0], batch.groups[0]) is None
        handle.remove()
        block.norm_first = False  # a post-norm block
        assert block_step(block, x, caches[0], batch.groups[0]) is None
        block.norm_first = True
        train_layout_(model)  # plain nn.Linear modules again
        assert block_step(block, x, caches[0], batch.groups[0]) is None
    assert block_step(block, x, caches[0], batch.groups[0]) is None  # grad on


def blocks_one_by_one(model, x, caches, rows):
    for i, block in enumerate(model.backbone.blocks):
        x = block_step(block, x, caches[i], rows)
    return x


@requires_kernels
@pytest.mark.parametrize("quantize", [False, True])
def test_stack_step_equals_the_blocks_one_by_one(quantize):
    model = block_model(position="rotary", quantize=quantize)
    mine, theirs = with_history(model), with_history(model)
    batch = SlotBatch(mine, [([1, 4, 6], [5, 9, 2], 1)], "cpu")
    x = torch.randn(3, 32)
    with torch.inference_mode():
        fused = stack_step(model.backbone.blocks, x, mine, batch.groups[0])
        assert fused is not None
        assert torch.equal(fused, blocks_one_by_one(model, x, theirs, batch.groups[0]))
    for a, b in zip(mine, theirs):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


@requires_kernels
def test_stack_step_notices_what_changed_since_its_plan():
    """The plan kept on the blocks is rebuilt (or refused) when a parameter is replaced, a module
    swapped (int8, training layout) or a hook added; never a step with stale weights."""
    model = block_model(position="rotary")
    blocks = model.backbone.blocks
    caches = with_history(model)
    rows = SlotBatch(caches, [([1], [5], 1)], "cpu").groups[0]
    x = torch.randn(1, 32)

    def agree():
        with torch.inference_mode():
            fused = stack_step(blocks, x, caches, rows)
            assert fused is not None
            assert torch.equal(fused, blocks_one_by_one(model, x, caches, rows))

    agree()
    norm = blocks[1].ffn_norm
    norm.weight = nn.Parameter(torch.full_like(norm.weight, 2.0))  # replaced, not changed in place
    agree()
    with torch.no_grad():
        blocks[0].attn.qkv.weight.mul_(0.5)  # in place: the plan holds the same tensor
    agree()
    from lmforge.layers.quant import quantize_

    quantize_(model, "int8")
    agree()
    handle = blocks[1].register_forward_hook(lambda *a: None)
    with torch.inference_mode():
        assert stack_step(blocks, x, caches, rows) is None
    handle.remove()
    agree()
    model2 = block_model(position="rotary")
    train_layout_(model2)
    with torch.inference_mode():
        assert stack_step(model2.backbone.blocks, x, caches, rows) is None


@requires_kernels
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_engine_decodes_through_the_fused_blocks_with_the_same_tokens(position, monkeypatch):
    import lmforge.models.gpt as gpt
    from lmforge.generation.engine import Engine, SamplingParams

    model = block_model(position=position)
    calls = []

    def counted(*args):
        out = layout.stack_step(*args)
        calls.append(out is not None)
        return out

    def decode(stack, block):
        monkeypatch.setattr(gpt, "stack_step", stack)
        monkeypatch.setattr(gpt, "block_step", block)
        engine = Engine(model, slots=4, max_len=24, threads=1)
        params = SamplingParams(max_new_tokens=12, temperature=0, logprobs=2)
        handles = [engine.submit([i + 1] * (3 + 2 * i), params) for i in range(3)]
        engine.run()
        return [h.tokens for h in handles], [[t.logprob for t in h.logprobs] for h in handles]

    def off(*args):
        return None

    fused_tokens, fused_logprobs = decode(counted, off)
    by_block_tokens, by_block_logprobs = decode(off, layout.block_step)
    plain_tokens, plain_logprobs = decode(off, off)
    assert any(calls) and fused_tokens == plain_tokens == by_block_tokens
    assert fused_logprobs == by_block_logprobs  # the same kernels, the same bits
    for a, b in zip(fused_logprobs, plain_logprobs):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)
