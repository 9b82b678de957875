"""FLOP counting and the machine's measured matmul peak, for model FLOPs utilisation (MFU).

MFU = achieved FLOP/s of real training steps / the peak FLOP/s of a large matmul in
the same precision, measured on the same machine; unlike samples/s it says how much
of the hardware the model code uses, whatever the hardware.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


def matmul_flops_per_second(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Best FLOP/s of a [size, size] @ [size, size] matmul (2·size³ FLOPs) over `repeats` timed runs."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up: the BLAS picks and caches its kernel
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_peak(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (2048, 4096),
                repeats: int = 5) -> tuple[float, dict[int, float]]:
    """The best FLOP/s over `sizes`, and the FLOP/s of each size."""
    by_size = {size: matmul_flops_per_second(size, dtype, device, repeats) for size in sizes}
    return max(by_size.values()), by_size


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run `fn` (forward and backward included) and count its FLOPs."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
