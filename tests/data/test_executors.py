"""Executors: the same per-batch function, results in input order, however many workers."""

from __future__ import annotations

import os
import sys

import pytest

from vlstack.data.executors import batches, get_executor, run_local, run_ray
from vlstack.errors import ConfigError

UNITS = [(0, 5), (5, 3), (8, 0), (8, 7)]  # (start, count): a unit yields start .. start + count - 1


def read(unit: tuple[int, int]) -> range:
    return range(unit[0], unit[0] + unit[1])


def square_with_pid(batch: list[int]) -> list[tuple[int, int]]:
    return [(x * x, os.getpid()) for x in batch]


def test_batches_never_span_units():
    assert list(batches(UNITS, read, 2)) == [[0, 1], [2, 3], [4], [5, 6], [7], [8, 9], [10, 11], [12, 13], [14]]
    with pytest.raises(ConfigError, match="batch_size"):
        list(batches(UNITS, read, 0))


@pytest.mark.parametrize("workers", [1, 2])
def test_local_keeps_input_order(workers):
    results = list(run_local(UNITS, read, square_with_pid, workers=workers, batch_size=2))
    assert [value for value, _ in results] == [x * x for x in range(15)]
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_unknown_executor_and_missing_ray_name_the_fix(monkeypatch):
    with pytest.raises(ConfigError, match="valid executors: local, ray"):
        get_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ConfigError, match=r"pip install 'vlstack\[ray\]'"):
        list(run_ray(UNITS, read, square_with_pid))
