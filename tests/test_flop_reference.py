"""The graders' FLOP references count exactly what torch.utils.flop_counter.FlopCounterMode counts."""
import pytest
import torch

from lora_grader.answers.nb02 import lora_flops
from lora_grader.answers.shared import matmul_flops
from lora_grader.checks.core import count_flops

SHAPES = [(1, 4096, 4096, 8), (10, 64, 32, 4), (3, 7, 5, 1), (512, 768, 3072, 16)]


def _branch_flops(tokens, d, k, r, materialize):
    return lora_flops({"num_tokens": tokens, "in_features": d, "out_features": k, "rank": r,
                       "materialize": materialize})["flops"]


def _meta(*shape):
    return torch.empty(*shape, device="meta")


@pytest.mark.parametrize("m, n, p", [(1, 1, 1), (5, 12, 20), (64, 3, 128)])
def test_matmul_flops_is_what_flop_counter_mode_counts(m, n, p):
    assert matmul_flops(m, n, p) == count_flops(lambda: _meta(m, n) @ _meta(n, p))


@pytest.mark.parametrize("tokens, d, k, r", SHAPES)
def test_lora_branch_references_match_flop_counter_mode(tokens, d, k, r):
    x, A, B = _meta(tokens, d), _meta(d, r), _meta(r, k)
    assert _branch_flops(tokens, d, k, r, materialize=False) == count_flops(lambda: (x @ A) @ B)
    assert _branch_flops(tokens, d, k, r, materialize=True) == count_flops(lambda: x @ (A @ B))


def test_leading_dimensions_count_as_tokens_and_scaling_is_free():
    x, A, B = _meta(2, 3, 5, 16), _meta(16, 4), _meta(4, 24)
    assert count_flops(lambda: (x @ A) @ B * 0.5) == _branch_flops(2 * 3 * 5, 16, 24, 4, materialize=False)


def test_linear_layer_counts_as_one_product():
    layer = torch.nn.Linear(16, 24, device="meta")
    assert count_flops(lambda: layer(_meta(2, 5, 16))) == matmul_flops(10, 16, 24)
