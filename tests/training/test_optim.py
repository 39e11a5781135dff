"""The optimizer: which parameters Muon and AdamW take, and how they are decayed."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.training import optim
from lmforge.training.optim import MultiOptimizer, Muon, make_optimizer, orthogonalize


def _gpt() -> GPTCausalLM:
    return GPTCausalLM(
        GPTConfig(
            vocab_size=40, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2, ffn_dim=64
        )
    )


def ids_of(group: dict) -> set[int]:
    return {id(p) for p in group["params"]}


def ids(opt) -> set[int]:
    return set().union(*(ids_of(g) for g in opt.param_groups))


def test_muon_takes_the_backbone_matrices_and_adamw_the_rest():
    model = _gpt()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, kind="muon")
    assert isinstance(opt, MultiOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    linear = {id(m.weight) for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)}
    assert ids(muon) == linear and linear
    assert not ids(muon) & ids(adamw)
    assert ids(muon) | ids(adamw) == {id(p) for p in model.parameters()}
    embed = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert embed <= ids(adamw)  # embeddings (and the tied head) stay with AdamW, undecayed
    assert all(g["weight_decay"] == 0.0 for g in adamw.param_groups if embed & ids_of(g))
    assert len(opt.param_groups) == len(muon.param_groups) + len(adamw.param_groups)


def test_adamw_is_one_plain_optimizer_with_undecayed_norms():
    model = _gpt()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    norms = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()
    }
    decayed = set().union(*(ids_of(g) for g in opt.param_groups if g["weight_decay"] > 0))
    assert norms and not norms & decayed


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="adamw"):
        make_optimizer(_gpt(), lr=1e-3, kind="sgd")


def test_muon_step_matches_torch_muon():
    # Ours runs Newton-Schulz in float32, torch's in bfloat16: the same step up to bf16 rounding.
    torch.manual_seed(0)
    start = torch.randn(96, 32)
    grads = [torch.randn(96, 32) for _ in range(3)]
    params = []
    for cls in (Muon, torch.optim.Muon):
        p = torch.nn.Parameter(start.clone())
        opt = cls([p], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        for g in grads:
            p.grad = g.clone()
            opt.step()
        params.append(p.detach())
    moved = (params[1] - start).abs().max()
    assert (params[0] - params[1]).abs().max() < 0.02 * moved
    assert opt.state[p]["momentum_buffer"].shape == start.shape


def test_muon_orthogonalizes_a_stack_as_each_matrix_alone():
    torch.manual_seed(0)
    stack = torch.randn(3, 40, 24)
    coefficients = (3.4445, -4.7750, 2.0315)
    together = orthogonalize(stack, coefficients, 5, 1e-7)
    for matrix, done in zip(stack, together):
        torch.testing.assert_close(done, orthogonalize(matrix, coefficients, 5, 1e-7))
    singular = torch.linalg.svdvals(together[0])
    assert 0.5 < singular.min() and singular.max() < 1.5  # near-orthogonal rows


def test_muon_steps_matrices_of_one_shape_together_as_alone():
    torch.manual_seed(0)
    shapes = [(16, 8), (8, 8), (16, 8)]  # two share a shape: one stacked iteration
    starts = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(2)]
    together = [torch.nn.Parameter(x.clone()) for x in starts]
    alone = [torch.nn.Parameter(x.clone()) for x in starts]
    options = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    opts = [Muon(together, ns_dtype=torch.float32, **options)]
    opts += [Muon([p], ns_dtype=torch.float32, **options) for p in alone]
    for step in grads:
        for p, q, g in zip(together, alone, step):
            p.grad, q.grad = g.clone(), g.clone()
        for opt in opts:
            opt.step()
    for p, q, x in zip(together, alone, starts):
        assert not torch.equal(p, x)
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_zero_gradient_shrinks_decayed_weights_and_leaves_the_rest(kind):
    model = _gpt()
    with torch.no_grad():  # LayerNorm starts at exactly 1 and 0: make every tensor generic
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    lr, wd = 0.1, 0.5
    opt = make_optimizer(model, lr=lr, weight_decay=wd, kind=kind)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed_kinds = (torch.nn.Linear,)
    decayed = {
        f"{prefix}.weight"
        for prefix, m in model.named_modules()
        if isinstance(m, decayed_kinds) and m.weight is not model.backbone.embed.token.weight
    }
    assert decayed
    for name, p in model.named_parameters():
        if name in decayed:  # only the decay moves it: p <- p * (1 - lr * wd)
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), msg=name)
        else:  # norms, biases, embeddings (and the tied head): not decayed, zero step
            assert torch.equal(p.detach(), before[name]), name


def test_muon_iterates_in_bf16_only_where_bf16_products_run_in_hardware(monkeypatch):
    torch.manual_seed(0)
    start, grad = torch.randn(48, 16), torch.randn(48, 16)
    moved, seen = {}, []
    iterate = optim.orthogonalize
    spy = lambda g, *a: seen.append(g.dtype) or iterate(g, *a)  # noqa: E731
    monkeypatch.setattr(optim, "orthogonalize", spy)
    for native in (True, False):
        monkeypatch.setattr(optim, "_cpu_bf16", lambda native=native: native)
        p = torch.nn.Parameter(start.clone())
        opt = Muon([p], lr=0.02, adjust_lr_fn="match_rms_adamw")
        p.grad = grad.clone()
        opt.step()
        assert seen.pop() == (torch.bfloat16 if native else torch.float32)  # what the step ran
        assert p.dtype == torch.float32
        moved[native] = p.detach() - start
    # the same step up to bf16 rounding (about 1% of the step)
    assert (moved[True] - moved[False]).norm() < 0.03 * moved[False].norm()
