"""The large cases behind "never forms A @ B": a base layer of 200,000 × 200,000 zeros that holds
no memory, and a memory limit under which the (in, out) matrix cannot be formed at all, whatever
the code does to torch's dispatch modes. Every allocation of that size below is refused by the
limit before it is made: nothing here uses more than a few megabytes."""
import resource
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

from lora_grader.checks import physical
from lora_grader.checks.core import count_flops_and_largest

SIZE = 200_000
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux only")


def test_a_zero_base_layer_computes_its_bias_every_way_it_can_be_called():
    base = physical.zero_linear(SIZE, SIZE, seed=3).requires_grad_(False)
    for x in (torch.randn(3, SIZE), torch.randn(1, 2, SIZE)):
        expected = base.bias.expand(*x.shape[:-1], SIZE)
        for out in (base(x), F.linear(x, base.weight, base.bias), x @ base.weight.T + base.bias,
                    torch.matmul(x, base.weight.t()) + base.bias, x @ (2 * base.weight).T + base.bias):
            assert type(out) is torch.Tensor and torch.equal(out, expected)
    assert isinstance(base.weight, torch.nn.Parameter) and not base.weight.requires_grad


@linux_only
def test_under_the_limit_an_in_by_out_matrix_cannot_be_formed_even_with_the_modes_off():
    A, B, x = torch.randn(SIZE, 2), torch.randn(2, SIZE), torch.randn(3, SIZE)
    before = resource.getrlimit(resource.RLIMIT_AS)
    with physical.memory_limit() as limited:
        assert limited
        assert ((x @ A) @ B).shape == (3, SIZE)  # the factored order fits easily
        for formed in (lambda: A @ B, lambda: torch.einsum("ir,ro->io", A, B)):
            with pytest.raises(RuntimeError) as error, _disable_current_modes(), torch._C._DisableTorchDispatch():
                formed()
            assert physical.out_of_memory(error.value), error.value
        with pytest.raises(RuntimeError) as error:
            physical.zero_linear(SIZE, SIZE, seed=3).weight.sum()  # any other use materialises the weight
        assert physical.out_of_memory(error.value)
    assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_the_dispatch_modes_do_not_see_A_times_B_formed_with_the_modes_off():
    """Why the large cases exist: the FLOP counter and the allocation tracker can be switched off."""
    x, A, B = torch.randn(3, 512), torch.randn(512, 2), torch.randn(2, 384)

    def hidden():
        with _disable_current_modes():
            return x @ (A @ B)

    assert count_flops_and_largest(hidden) == (0, 0)


def test_a_sample_holds_some_columns_and_every_row_sum():
    case = {"seed": 4, "out_features": 50}
    out = torch.randn(2, 3, 50)
    sample = physical.sample(out, case)
    assert sample["shape"] == [2, 3, 50] and sample["columns"].shape == (2, 3, physical.SAMPLED_COLUMNS)
    assert torch.allclose(sample["row_sums"], out.double().sum(-1))
    assert torch.equal(physical.sampled_columns(case), physical.sampled_columns(dict(case)))
