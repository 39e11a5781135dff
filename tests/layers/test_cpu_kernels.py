"""The small-rows float32 linear kernel: F.linear's numbers for 1 to 8 rows, every shape, with
and without a bias; a row's bits do not depend on the rows beside it; built for this CPU's
instruction set and for plain SSE (where AVX2 or AVX-512 are missing)."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.layers import cpu_kernels


@pytest.fixture(scope="module", params=["native", "DEFAULT"])
def op(request):
    isa = None if request.param == "native" else request.param
    found = cpu_kernels.small_linear(isa)
    assert found is not None, "the small-rows kernel did not build: is a C++ compiler installed?"
    return found


@pytest.mark.parametrize("k, n", [(64, 48), (100, 37), (768, 2304), (17, 1), (3, 130)])
def test_matches_torch_linear(op, k, n):
    torch.manual_seed(k + n)
    w, b = torch.randn(n, k), torch.randn(n)
    for rows in range(1, cpu_kernels.MAX_ROWS + 1):
        x = torch.randn(rows, k)
        torch.testing.assert_close(op(x, w, None, b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(op(x, w, None, None), F.linear(x, w), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("k, n", [(64, 48), (100, 37), (768, 3072), (3, 130)])
def test_int8_weights_with_a_scale_per_row(op, k, n):
    torch.manual_seed(k * n)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale, b = torch.rand(n) / 100, torch.randn(n)
    for rows in (1, 3, 8):
        x = torch.randn(rows, k)
        want = x.double() @ (q.double() * scale.double()[:, None]).T
        got = op(x, q, scale, None)
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(op(x, q, scale, b), got + b, atol=1e-5, rtol=1e-6)
    with pytest.raises(RuntimeError, match="scale"):
        op(x, q, None, None)


def test_a_row_gets_the_same_bits_alone_or_beside_others(op):
    torch.manual_seed(0)
    w, b = torch.randn(301, 200), torch.randn(301)
    x = torch.randn(8, 200)
    together = op(x, w, None, b)
    for i in range(8):
        assert torch.equal(op(x[i : i + 1], w, None, b), together[i : i + 1])
    assert torch.equal(op(x[2:7], w, None, b), together[2:7])


def test_takes_strided_rows_and_refuses_what_it_cannot_do(op):
    torch.manual_seed(1)
    w = torch.randn(40, 32)
    x = torch.randn(32, 6).t()  # not contiguous
    torch.testing.assert_close(op(x, w, None, None), F.linear(x, w), atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        op(torch.randn(9, 32), w, None, None)
    with pytest.raises(RuntimeError, match="float32"):
        op(torch.randn(2, 32, dtype=torch.float64), w.double(), None, None)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("LMFORGE_KERNELS", "0")
    assert cpu_kernels.small_linear() is None


def test_a_failed_build_gives_none_and_a_reason(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("LMFORGE_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    monkeypatch.setattr(cpu_kernels, "_ops", {})
    with caplog.at_level("INFO"):
        assert cpu_kernels.small_linear() is None
    assert "did not build" in caplog.text
    assert not list(tmp_path.iterdir())  # no half-written library left behind
