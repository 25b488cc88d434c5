"""Expected values more than one notebook's checks use."""
from __future__ import annotations


def matmul_flops(m: int, n: int, p: int) -> int:
    """FLOPs of an (m, n) @ (n, p) product as FlopCounterMode counts them: 2 per multiply-add.
    The answers use this rather than FlopCounterMode, whose first use costs seconds;
    tests/test_flop_reference.py checks that the two agree."""
    return 2 * m * n * p
