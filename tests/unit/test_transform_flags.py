"""`shiftscore eval --angle/--scale/--brightness`: the flags become the API's axes."""

from __future__ import annotations

import pytest

from shiftscore.cli import _parser
from shiftscore.eval_command import UsageError, grid_from, join_signed_values


def parse(*argv: str):
    return _parser().parse_args(join_signed_values(["eval", "model.pt", *argv]))


def test_a_range_a_list_and_no_shifts_unless_asked():
    args = parse("--angle", "-30:30:10", "--scale=0.9,1.1")
    assert grid_from(args) == {"angle": {"range": [-30.0, 30.0], "step": 10.0}, "scale": {"list": [0.9, 1.1]}}


def test_shift_flags_join_the_grid():
    assert grid_from(parse("--brightness=-0.2:0.2:0.1", "--max-shift", "2"))["shifts"] == {
        "dx": [-2.0, 2.0], "dy": [-2.0, 2.0], "step": 1.0}
    assert grid_from(parse("--angle=5", "--dx=-1:1"))["shifts"]["dx"] == [-1.0, 1.0]
    # Without any axis flag the sweep is the translation grid it always was.
    assert grid_from(parse()) == {"shifts": {"dx": [-3.0, 3.0], "dy": [-3.0, 3.0], "step": 1.0}}


@pytest.mark.parametrize("raw", ["-30:30", "a,b", "1:2:3:4"])
def test_a_malformed_axis_says_what_it_needs(raw):
    with pytest.raises(UsageError, match="MIN:MAX:STEP"):
        grid_from(parse(f"--angle={raw}"))
