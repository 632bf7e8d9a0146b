"""What the worker accepts back from a sandbox: real tallies pass, every kind of forgery is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from core.grid import build_grid, build_sweep_grid
from worker.engine.tally import MAX_EXAMPLES, Tally
from worker.sandbox import protocol, results


def real_tally(grid=None) -> dict:
    grid = grid or build_grid({"dx": [-1, 1], "dy": [0, 0], "step": 1})
    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 3, (5, grid.size))
    tally = Tally(num_shifts=grid.size)
    tally.add(grid, predictions, predictions[:, 1], rng.integers(0, 3, 5), np.arange(5),
              np.asarray(grid.neighbour_pairs(), dtype=np.int64).reshape(-1, 2),
              np.log(rng.uniform(0.01, 1.0, (5, grid.size))))
    return tally.to_json()


def test_a_real_tally_passes():
    results.check_chunk_tally(real_tally(), "classification", 3, 5, layers=False)


def test_a_real_rotation_tally_passes_with_its_whole_worst_transform():
    grid = build_sweep_grid({"angle": {"list": [-10, 10, 20]}})
    tally = real_tally(grid)
    assert tally["examples"] and all(set(e["worst_transform"]) == {"dx", "dy", "angle", "scale", "brightness"}
                                     and e["worst_transform"]["angle"] in (-10, 10, 20) for e in tally["examples"])
    results.check_chunk_tally(tally, "classification", 3, 5, layers=False)


FORGERIES = {
    "another grid": lambda t: t.update(num_shifts=4),
    "another sample count": lambda t: t.update(n=6),
    "a negative count": lambda t: t.update(flip_changes=-1),
    "a boolean for a count": lambda t: t.update(clean_correct=True),
    "a float for a count": lambda t: t.update(worst_correct=1.5),
    "more hits than samples": lambda t: t.update(clean_correct=99),
    "a short per-shift list": lambda t: t.update(shift_correct=[1, 2]),
    "a string in a list": lambda t: t.update(shift_agree=[1, "2", 3]),
    "a bad class label": lambda t: t["classes"].update({"x": {"n": 1}}),
    "extra class fields": lambda t: next(iter(t["classes"].values())).update(evil=1),
    "too many examples": lambda t: t.update(examples=[t["examples"][0]] * (MAX_EXAMPLES + 1)),
    "an example with extra fields": lambda t: t["examples"][0].update(html="<script>"),
    "an example without its confidence": lambda t: t["examples"][0].pop("worst_probability"),
    "a confidence above 1": lambda t: t["examples"][0].update(worst_probability=1.5),
    "a negative confidence": lambda t: t["examples"][0].update(worst_probability=-0.1),
    "a confidence that is text": lambda t: t["examples"][0].update(worst_probability="0.5"),
    "a confidence that is NaN": lambda t: t["examples"][0].update(worst_probability=float("nan")),
    "an example without its transform": lambda t: t["examples"][0].pop("worst_transform"),
    "a transform that is a list": lambda t: t["examples"][0].update(worst_transform=[0, 0]),
    "a transform with half the axes": lambda t: t["examples"][0]["worst_transform"].update(angle=5),
    "a transform with an unknown axis": lambda t: t["examples"][0]["worst_transform"].update(
        angle=5, scale=1, brightness=0, shear=2),
    "a transform elsewhere than worst_shift": lambda t: t["examples"][0]["worst_transform"].update(dx=9),
    "an infinite angle": lambda t: t["examples"][0]["worst_transform"].update(
        angle=float("inf"), scale=1, brightness=0),
    "an angle that is text": lambda t: t["examples"][0]["worst_transform"].update(angle="5", scale=1, brightness=0),
    "a layer profile nobody asked for": lambda t: t.update(layers={}),
    "not an object": lambda t: t.clear(),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_forged_tallies_are_refused(name):
    tally = copy.deepcopy(real_tally())
    assert tally["examples"], "the sample tally must have fragile examples to forge"
    FORGERIES[name](tally)
    with pytest.raises(results.BadResult):
        results.check_chunk_tally(tally, "classification", 3, 5, layers=False)


CHECK = {"rows": 5, "argmax_equal": 4, "max_abs_diff": 0.5, "tolerance": 0.01, "agrees": False, "near_tie_rows": 0}

CHECK_FORGERIES = {
    "absent": lambda c: c.clear(),
    "more rows than the chunk": lambda c: c.update(rows=6),
    "more equal rows than checked": lambda c: c.update(argmax_equal=6),
    "an extra field": lambda c: c.update(html="<b>"),
    "a NaN difference": lambda c: c.update(max_abs_diff=float("nan")),
    "a negative tolerance": lambda c: c.update(tolerance=-1.0),
    "agreement as text": lambda c: c.update(agrees="yes"),
    "agreement against its figures": lambda c: c.update(agrees=True),
    "more near ties re-run than views (5 samples × (3 shifts + clean))": lambda c: c.update(near_tie_rows=21),
    "near ties re-run in a chunk that fell back": lambda c: c.update(near_tie_rows=1),
    "near ties as text": lambda c: c.update(near_tie_rows="2"),
}


def test_a_real_data_check_passes_where_the_chunk_ran_on_another_runtime():
    results.check_chunk_tally({**real_tally(), "real_data_check": CHECK}, "classification", 3, 5, layers=False,
                              real_data=True)
    with pytest.raises(results.BadResult):  # the model's own runtime has nothing to check
        results.check_chunk_tally({**real_tally(), "real_data_check": CHECK}, "classification", 3, 5,
                                  layers=False)


@pytest.mark.parametrize("name", CHECK_FORGERIES)
def test_forged_real_data_checks_are_refused(name):
    check = dict(CHECK)
    CHECK_FORGERIES[name](check)
    tally = {**real_tally(), "real_data_check": check} if check else real_tally()
    with pytest.raises(results.BadResult):
        results.check_chunk_tally(tally, "classification", 3, 5, layers=False, real_data=True)


def test_text_from_model_code_is_bounded_and_plain():
    text = results.user_text("\x1b[31mred\x00" + "x" * 5000)
    assert len(text) <= results.MAX_TEXT and "\x1b" not in text and "\x00" not in text


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"{not json\n", b'{"a": NaN}\n', b"\xff\xfe\n"])
def test_lines_that_are_not_json_objects_are_protocol_errors(line):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(line)


def test_an_oversized_line_is_refused_before_parsing():
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b"{" + b" " * (protocol.MAX_LINE_BYTES + 1) + b"}\n")
