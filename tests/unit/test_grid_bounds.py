"""Grids are counted before they are built: a huge range costs arithmetic, never a list (issue 11)."""

from __future__ import annotations

import math
import time

import pytest

from core.grid import MAX_SHIFTS, GridError, axis_count, build_grid

HUGE = [
    {"dx": [0, 1e7], "dy": [0, 0]},  # 7.5 s of an API worker on main before the limit refused it
    {"dx": [0, 1e12], "dy": [0, 0]},  # exhausted memory on main
    {"dx": [0, 1e308], "dy": [0, 0], "step": 1e-308},  # OverflowError on main, a 500
    {"dx": [-1e308, 1e308], "dy": [0, 0]},  # the span itself overflows to inf
    {"dx": [0, 0], "dy": [-1e300, 1e300], "step": 1e-300},
    {"dx": [0, 200], "dy": [0, 200]},  # each axis fits, their product does not
]


@pytest.mark.parametrize("spec", HUGE, ids=lambda spec: f"{spec['dx']}x{spec['dy']}/{spec.get('step', 1)}")
def test_a_huge_grid_is_refused_at_once(spec):
    started = time.perf_counter()
    with pytest.raises(GridError, match=f"at most {MAX_SHIFTS}"):
        build_grid(spec)
    assert time.perf_counter() - started < 0.2


def test_the_count_is_the_spec_formula():
    # SPEC §1: k = 0 … ⌊(max − min)/step + 1e-9⌋, so the count is that plus one.
    for low, high, step in [(-3, 3, 1), (-1, 1, 0.1), (0, 0.3, 0.1), (-2.5, 2.5, 0.5), (0, 1, 0.3), (5, 5, 1)]:
        expected = math.floor((high - low) / step + 1e-9) + 1
        assert axis_count(low, high, step) == expected
        grid = build_grid({"dx": [low, high], "dy": [0, 0], "step": step})
        assert grid.size == expected and grid.shifts[-1][0] == pytest.approx(low + (expected - 1) * step)


def test_the_limit_itself_is_allowed():
    assert build_grid({"dx": [0, MAX_SHIFTS - 1], "dy": [0, 0]}).size == MAX_SHIFTS
    assert build_grid({"dx": [0, 99], "dy": [0, 99]}).size == MAX_SHIFTS
    with pytest.raises(GridError, match="has 10100 shifts"):
        build_grid({"dx": [0, 99], "dy": [0, 100]})
    with pytest.raises(GridError, match="more than 10000 values"):
        build_grid({"dx": [0, MAX_SHIFTS], "dy": [0, 0]})


def test_a_long_list_is_refused_before_its_pairs_are_read():
    pairs = [[i, 0] for i in range(1_000_000)]
    started = time.perf_counter()
    with pytest.raises(GridError, match="1000000 shifts; at most 10000"):
        build_grid({"list": pairs})
    assert time.perf_counter() - started < 0.2
