"""Benchmarks in their official formats; importing this package registers all of them in `BENCHMARKS`.

A new benchmark is one module: a `Benchmark` subclass decorated with `@register(name)`,
imported below.
"""

from vlstack.eval.benchmarks import aokvqa, chartqa, docvqa, gqa, vqarad, vqav2  # noqa: F401  (registration)
from vlstack.eval.benchmarks.base import BENCHMARKS, Benchmark, EvalItem, get_benchmark, register

__all__ = ["BENCHMARKS", "Benchmark", "EvalItem", "get_benchmark", "register"]
