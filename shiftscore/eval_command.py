"""`shiftscore eval`: upload a model, run a sweep, print the summary, gate a pipeline on it.

Exit codes:
    0  the sweep succeeded and every --min-* and --max-drop gate was met (or none was given)
    1  the sweep succeeded but a metric is below its --min-* threshold, or dropped from the
       --baseline by more than its --max-drop
    2  usage: bad flags, a missing file, no URL or token, a --baseline that does not exist or compare
    3  the service refused a request (the problem's detail is printed) or could not be reached, or
       --mlflow could not log the run
    4  the model is invalid, the sweep failed or was cancelled, or waiting timed out
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any, TextIO

from core.sweep import PADDING_MODES
from shiftscore import junit
from shiftscore.client import (
    Client,
    Conflict,
    ConnectionFailed,
    EvaluationFailed,
    DatasetInvalid,
    ModelInvalid,
    NotFound,
    ShiftScoreError,
    WaitTimeout,
)
from shiftscore.mlflow_logging import log_evaluation, require_mlflow

EXIT_OK, EXIT_BELOW_THRESHOLD, EXIT_USAGE, EXIT_SERVICE, EXIT_FAILED = 0, 1, 2, 3, 4
# (metric in the summary, argparse destination, flag)
GATES = (
    ("clean_accuracy", "min_clean_accuracy", "--min-clean-accuracy"),
    ("consistency", "min_consistency", "--min-consistency"),
    ("worst_case_accuracy", "min_worst_case", "--min-worst-case"),
    ("mean_accuracy", "min_mean_accuracy", "--min-mean-accuracy"),
)
METRICS = ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate")
# flip_rate counts changes: it "drops" by rising.
LOWER_IS_BETTER = {"flip_rate"}
TERMINAL = ("succeeded", "failed", "cancelled")


INPUT_EXAMPLE = '{"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]}'
SCALING = ("Pixels are divided by 255 to [0, 1] before the model's normalization (x - mean) / std, so give the "
           "mean and std the model was trained with on that [0, 1] scale (statistics of 0-255 pixels divided "
           "by 255); leaving them out means mean 0 and std 1, no normalization at all.")
# The service never sees the accuracy a model scored at validation; this gate is where a pipeline states it.
CLEAN_GATE_HELP = (" (give the model's validation accuracy less a tolerance: a clean accuracy well below it "
                   "usually means a wrong --input, not a worse model)")
CLEAN_GATE_HINT = ("a clean accuracy below the model's validation figure usually means the inputs differ from "
                   "training: check --input's mean and std (on the [0, 1] scale), the channel order (RGB vs BGR) "
                   "and the preprocessing")
# Flags whose values start with a minus sign that argparse would take for an option.
_SIGNED_VALUE_FLAGS = ("--dx", "--dy", "--shift-list", "--angle", "--scale", "--brightness")
TRANSFORM_AXES = ("angle", "scale", "brightness")


class UsageError(ValueError):
    """A flag's value cannot be used; the message says which and why."""


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand to the `shiftscore` parser."""
    parser = commands.add_parser(
        "eval", help="upload a model, run a shift sweep, print the summary, gate on thresholds",
        description="Upload a model (or use --model-id), run a shift sweep against SHIFTSCORE_URL and print "
                    "its summary. Exit codes: 0 ok, 1 a metric below its --min-* threshold or dropped from "
                    "the --baseline by more than its --max-drop, 2 usage, "
                    "3 the service refused or could not be reached, 4 model invalid / sweep failed / timed out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="model file to upload (TorchScript .pt, .pt2, ONNX, state dict)")
    parser.add_argument("--model-id", help="evaluate an already uploaded model instead of uploading one: its id, "
                                           "or its name (the latest ready version)")
    parser.add_argument("--input", help=f"the model's input as JSON, e.g. '{INPUT_EXAMPLE}' (needed to upload). "
                                        f"{SCALING}")
    parser.add_argument("--format", default="torchscript", choices=["torchscript", "exported", "state_dict", "onnx"])
    parser.add_argument("--name", help="model name (default: the file's name without extension); the same name "
                                       "with the same bytes and input reuses that model, new bytes make its next version")
    parser.add_argument("--task", default="classification", choices=["classification", "segmentation"])
    parser.add_argument("--architecture", help="built-in architecture, for --format state_dict")
    parser.add_argument("--architecture-options", help="the architecture's options as JSON")
    _add_sweep_arguments(parser)
    _add_gate_and_output_arguments(parser)


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """What to sweep: the dataset, the grid of transforms, padding and samples."""
    parser.add_argument("--dataset", default="digits", help="dataset id or name")
    parser.add_argument("--dataset-file", help="upload this NPZ (images, labels) and evaluate on it")
    parser.add_argument("--dataset-name", help="name of the --dataset-file upload (default: the file's name without "
                                               "extension); the same name and file again reuse that dataset")
    parser.add_argument("--max-shift", type=float, help="shift dx and dy from -N to N (default 3, or no shift at all "
                        "when --angle, --scale or --brightness is given without shift flags)")
    parser.add_argument("--dx", help="dx range MIN:MAX (--dx -2:2 or --dx=-2:2), overrides --max-shift")
    parser.add_argument("--dy", help="dy range MIN:MAX (--dy -2:2 or --dy=-2:2), overrides --max-shift")
    parser.add_argument("--step", type=float, default=1.0, help="grid step (0.5 for sub-pixel shifts)")
    parser.add_argument("--shift-list", help='explicit shifts "DX,DY;DX,DY;…" (e.g. --shift-list "-1,0;1,0")')
    for axis, example, meaning in (("angle", "-30:30:10", "degrees, counter-clockwise"),
                                   ("scale", "0.8:1.2:0.1", "above 1 enlarges"),
                                   ("brightness", "-0.2,0,0.2", "added to [0, 1] pixels")):
        parser.add_argument(f"--{axis}", help=f"{meaning}: MIN:MAX:STEP (--{axis}={example}) or a list V,V,…; "
                            "the grid is the product with the shifts")
    parser.add_argument("--padding", default="zeros", choices=PADDING_MODES)
    parser.add_argument("--fill", type=float, help="fill value in [0, 1] for --padding zeros")
    parser.add_argument("--max-samples", type=int, help="evaluate a seeded random subset of this many samples")
    parser.add_argument("--seed", type=int, help="seed of the subset (default 0)")
    parser.add_argument("--tag", action="append", dest="tags", help="tag the evaluation (repeatable)")


def _add_gate_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Thresholds, baselines, how the run executes, and where its results go."""
    for metric, dest, flag in GATES:
        parser.add_argument(flag, dest=dest, type=float, metavar="X", help=f"exit 1 if {metric} < X"
                            + (CLEAN_GATE_HELP if metric == "clean_accuracy" else ""))
    parser.add_argument("--early-exit", action=argparse.BooleanOptionalAction, default=None,
                        help="stop each sample at its first wrong shift: exact worst_case_accuracy and "
                             "clean_accuracy only, much faster (default: on when --min-worst-case is the only gate)")
    parser.add_argument("--backend", choices=["auto", "torch"], default="auto",
                        help="auto: the runtime chosen at validation (same predictions); torch: eager PyTorch")
    parser.add_argument("--baseline", metavar="EVAL_ID_OR_MODEL_NAME",
                        help="compare with this evaluation, or with the newest succeeded evaluation of this model "
                             "name (any version) on the same dataset and sweep; needs --max-drop")
    parser.add_argument("--max-drop", action="append", default=[], metavar="METRIC=X",
                        help="exit 1 if METRIC fell more than X below the --baseline (flip_rate: rose more than X); "
                             "repeatable, e.g. --max-drop consistency=0.02 --max-drop worst_case_accuracy=0.05")
    parser.add_argument("--junit-xml", metavar="PATH", help="write the gates as JUnit XML, one test case each")
    parser.add_argument("--mlflow", action="store_true",
                        help="log the summary (metrics), the sweep (params), the per-shift CSV and the heatmaps "
                             "(artifacts) to MLFLOW_TRACKING_URI: the active run, else a new one; needs "
                             "pip install 'shiftscore[mlflow]'")
    parser.add_argument("--url", help="service URL (default SHIFTSCORE_URL)")
    parser.add_argument("--token", help="bearer token (default SHIFTSCORE_TOKEN)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout, for machines")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages on stderr (CI logs)")


def join_signed_values(argv: list[str]) -> list[str]:
    """`--dx -2:2` as `--dx=-2:2`: argparse reads a value that starts with '-' as an unknown option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _SIGNED_VALUE_FLAGS and arg[:2] not in ("--", "-h") and arg.startswith("-"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _range(raw: str | None, half: float, flag: str) -> list[float]:
    if raw is None:
        return [-half, half]
    low, sep, high = raw.partition(":")
    try:
        if not sep:
            raise ValueError
        return [float(low), float(high)]
    except ValueError:
        raise UsageError(f"{flag} needs MIN:MAX, e.g. {flag} -2:2; got {raw!r}") from None


def axis_from(raw: str, flag: str) -> dict[str, Any]:
    """`MIN:MAX:STEP` as {"range": [MIN, MAX], "step": STEP}; `V,V,…` as {"list": [V, …]}."""
    try:
        if ":" in raw:
            low, high, step = (float(part) for part in raw.split(":"))
            return {"range": [low, high], "step": step}
        return {"list": [float(part) for part in raw.split(",")]}
    except ValueError:
        raise UsageError(f"{flag} needs MIN:MAX:STEP (e.g. {flag}=-30:30:10) or a list V,V,…; got {raw!r}") from None


def grid_from(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep's axes from the grid flags: `shifts`, and `angle`, `scale`, `brightness` when given."""
    axes = {axis: axis_from(getattr(args, axis), f"--{axis}") for axis in TRANSFORM_AXES
            if getattr(args, axis, None) is not None}
    shift_flags = (args.dx, args.dy, args.shift_list, args.max_shift)
    if not axes or any(flag is not None for flag in shift_flags):
        axes["shifts"] = shifts_from(args)
    return axes


def shifts_from(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep's `shifts` object from the grid flags."""
    if args.shift_list:
        try:
            pairs = [[float(v) for v in item.split(",")] for item in args.shift_list.split(";") if item.strip()]
        except ValueError:
            pairs = []
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise UsageError(f'--shift-list needs "DX,DY;DX,DY;…", got {args.shift_list!r}')
        return {"list": pairs}
    half = 3.0 if args.max_shift is None else args.max_shift
    return {"dx": _range(args.dx, half, "--dx"), "dy": _range(args.dy, half, "--dy"), "step": args.step}


def _json_flag(raw: str | None, flag: str) -> Any:
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} must be JSON: {exc}") from None


def _check_usage(args: argparse.Namespace) -> None:
    if bool(args.model) == bool(args.model_id):
        raise UsageError("give a model file to upload, or --model-id of an uploaded model (not both)")
    if args.model:
        if not os.path.isfile(args.model):
            raise UsageError(f"no such model file: {args.model}")
        if not isinstance(_json_flag(args.input, "--input"), dict):
            raise UsageError(f"uploading a model needs --input, its input size and normalization, e.g. "
                             f"--input '{INPUT_EXAMPLE}'. {SCALING}")
    if args.dataset_file and not os.path.isfile(args.dataset_file):
        raise UsageError(f"no such dataset file: {args.dataset_file}")
    for _, dest, flag in GATES:
        value = getattr(args, dest)
        if value is not None and not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag} must be between 0 and 1, got {value}")
    max_drops(args)
    if args.mlflow:
        try:
            require_mlflow()
        except ImportError as exc:
            raise UsageError(str(exc)) from None
    if bool(args.baseline) != bool(args.max_drop):
        raise UsageError("--baseline and --max-drop go together: --baseline EVAL_ID_OR_MODEL_NAME "
                         "--max-drop consistency=0.02")


def wants_early_exit(args: argparse.Namespace) -> bool:
    """--early-exit as given; by default on when --min-worst-case is the only thing the run needs."""
    if args.early_exit is not None:
        return bool(args.early_exit)
    others = [getattr(args, dest) for _, dest, _ in GATES if dest != "min_worst_case"]
    # A gate stops early on translations only: a sweep with other axes measures them all.
    return args.min_worst_case is not None and all(value is None for value in others) and not (
        args.baseline or args.max_drop or args.mlflow or any(getattr(args, axis) for axis in TRANSFORM_AXES))


def max_drops(args: argparse.Namespace) -> dict[str, float]:
    """The --max-drop bounds by metric."""
    bounds: dict[str, float] = {}
    for raw in args.max_drop:
        metric, sep, value = raw.partition("=")
        try:
            bound = float(value)
        except ValueError:
            bound = -1.0
        if not sep or metric not in METRICS or not 0.0 <= bound <= 1.0:
            raise UsageError(f"--max-drop needs METRIC=X with METRIC one of {', '.join(METRICS)} and X in "
                             f"[0, 1], e.g. --max-drop consistency=0.02; got {raw!r}")
        bounds[metric] = bound
    return bounds


class ProgressBar:
    """tqdm's bar on stderr (images done, rate, elapsed, time left); in a log, a line every 10 s."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, evaluation: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done, total, status = evaluation["progress"]["done"], evaluation["progress"]["total"], evaluation["status"]
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, unit="img", unit_scale=True, file=self.stream,
                            desc=f"evaluation {evaluation['id'][:8]}", dynamic_ncols=True,
                            mininterval=0.2 if self.stream.isatty() else 10.0)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(max(done - self.bar.n, 0))
        if status in TERMINAL:
            self.bar.close()


def gate(summary: dict[str, Any], args: argparse.Namespace,
         baseline: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each requested threshold and drop bound with the measured figure, whether it was met and why."""
    gates = []
    for metric, dest, flag in GATES:
        threshold = getattr(args, dest)
        if threshold is None:
            continue
        value = summary.get(metric)
        passed = value is not None and value >= threshold
        shown = "none" if value is None else f"{value:.4f}"
        gates.append({"metric": metric, "flag": flag, "threshold": threshold, "value": value, "passed": passed,
                      "name": f"{metric} >= {threshold:g}",
                      "message": f"{metric} {shown} {'meets' if passed else 'is below'} {flag} {threshold:g}"
                      + ("" if passed or metric != "clean_accuracy" else f": {CLEAN_GATE_HINT}")})
    for metric, bound in (max_drops(args).items() if baseline is not None else ()):
        value, before = summary.get(metric), (baseline.get("summary") or {}).get(metric)
        if value is None or before is None:
            drop, passed = None, False
            message = f"{metric} cannot be compared: no value in this evaluation or the baseline"
        else:
            drop = (value - before) if metric in LOWER_IS_BETTER else (before - value)
            passed = drop <= bound + 1e-12
            message = (f"{metric} {value:.4f} vs baseline {before:.4f} (evaluation {baseline['id']}): drop "
                       f"{drop:.4f} {'within' if passed else 'exceeds'} --max-drop {bound:g}")
        gates.append({"metric": metric, "flag": "--max-drop", "threshold": bound, "value": value,
                      "baseline": before, "baseline_id": baseline["id"], "drop": drop, "passed": passed,
                      "name": f"{metric} drop <= {bound:g} vs baseline", "message": message})
    return gates


def summary_table(evaluation: dict[str, Any], gates: list[dict[str, Any]]) -> str:
    """The summary as an aligned text table, with each threshold and its verdict."""
    summary = evaluation["summary"]
    by_metric = {g["metric"]: g for g in gates if g["flag"] != "--max-drop"}
    lines = [f"evaluation {evaluation['id']}: {summary['num_samples']} samples x {summary['num_shifts']} shifts",
             f"{'metric':<22}{'value':>8}  {'threshold':>9}  result"]
    for metric in METRICS:
        value = summary.get(metric)
        shown = "-" if value is None else f"{value:.4f}"
        rule = by_metric.get(metric)
        threshold = f">= {rule['threshold']:.4f}" if rule else ""
        verdict = ("ok" if rule["passed"] else "BELOW") if rule else ""
        lines.append(f"{metric:<22}{shown:>8}  {threshold:>9}  {verdict}".rstrip())
    lines += [f"{g['message']}: {'ok' if g['passed'] else 'EXCEEDED'}" for g in gates if g["flag"] == "--max-drop"]
    return "\n".join(lines)


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _evaluate(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    if args.model:
        _say(args, f"uploading model {args.model} …")
        model = client.upload_model(
            args.model, input=_json_flag(args.input, "--input"), format=args.format, name=args.name,
            task=args.task, architecture=args.architecture,
            architecture_options=_json_flag(args.architecture_options, "--architecture-options"),
            wait=True, timeout=args.timeout,
        )
        _say(args, f"model {model['name']} version {model['version']} ({model['id']}) is ready "
                   f"({model['num_parameters']} parameters)")
    else:
        model = client.wait_model(args.model_id, timeout=args.timeout)
    args.model_label = f"{model['name']} v{model['version']}"
    dataset_id = args.dataset
    if args.dataset_file:
        dataset_id = client.upload_dataset(args.dataset_file, args.dataset_name, timeout=args.timeout)["id"]
        _say(args, f"dataset {dataset_id} uploaded")
    evaluation = client.submit(model["id"], dataset_id, **grid_from(args), padding=args.padding,
                               fill=args.fill, max_samples=args.max_samples, seed=args.seed, tags=args.tags,
                               backend=None if args.backend == "auto" else args.backend,
                               early_exit=True if wants_early_exit(args) else None)
    _say(args, f"evaluation {evaluation['id']} submitted")
    return client.wait(evaluation["id"], progress=ProgressBar(sys.stderr, not args.quiet), timeout=args.timeout)


def _junit_name(args: argparse.Namespace) -> str:
    return f"{getattr(args, 'model_label', None) or args.model_id or args.model} on {args.dataset_file or args.dataset}"


def _fail(args: argparse.Namespace, code: int, message: str, problem: dict[str, Any] | None = None) -> int:
    print(f"shiftscore eval: {message}", file=sys.stderr)
    if args.junit_xml:
        junit.write_error(args.junit_xml, _junit_name(args), code, message, time.monotonic() - args.started)
    if args.json:
        print(json.dumps({"passed": False, "exit_code": code, "error": problem or {"detail": message}}))
    return code


def run_eval(args: argparse.Namespace) -> int:
    """Run `shiftscore eval`; returns the exit code (see the module docstring)."""
    args.started = time.monotonic()
    try:
        _check_usage(args)
        grid_from(args)
        client = Client(args.url, args.token, timeout=120)
    except (UsageError, ValueError) as exc:
        return _fail(args, EXIT_USAGE, str(exc))
    try:
        evaluation = _evaluate(client, args)
    except UsageError as exc:
        return _fail(args, EXIT_USAGE, str(exc))
    except (ModelInvalid, DatasetInvalid, EvaluationFailed, WaitTimeout) as exc:
        return _fail(args, EXIT_FAILED, f"{exc.title}: {exc.detail}", exc.problem)
    except ConnectionFailed as exc:
        return _fail(args, EXIT_SERVICE, exc.detail, exc.problem)
    except ShiftScoreError as exc:
        fields = "".join(f"\n  {e.get('field')}: {e.get('message')}" for e in exc.errors)
        return _fail(args, EXIT_SERVICE, f"{exc}{fields}", exc.problem)
    baseline = None
    if args.baseline:
        try:
            baseline = client.find_baseline(args.baseline, evaluation)
        except (NotFound, Conflict) as exc:
            return _fail(args, EXIT_USAGE, f"--baseline {args.baseline}: {exc.detail}", exc.problem)
        except ShiftScoreError as exc:
            return _fail(args, EXIT_SERVICE, str(exc), exc.problem)
    gates = gate(evaluation["summary"], args, baseline)
    passed = all(g["passed"] for g in gates)
    code = EXIT_OK if passed else EXIT_BELOW_THRESHOLD
    for warning in evaluation.get("warnings") or []:
        print(f"warning: {warning['detail']}", file=sys.stderr)
    if args.junit_xml:
        junit.write_gates(args.junit_xml, _junit_name(args), evaluation, gates, time.monotonic() - args.started)
    run_id = None
    if args.mlflow:
        try:
            # MLflow prints the run's link on stdout, which --json keeps for its one object.
            with contextlib.redirect_stdout(sys.stderr):
                run_id = log_evaluation(client, evaluation)
        except Exception as exc:  # MLflow raises its own exceptions, and requests' for an unreachable server
            return _fail(args, EXIT_SERVICE, f"could not log to MLflow: {exc}")
        _say(args, f"logged to MLflow run {run_id}")
    if args.json:
        print(json.dumps({"passed": passed, "exit_code": code, "evaluation": evaluation, "mlflow_run_id": run_id,
                          "summary": evaluation["summary"], "gates": gates,
                          "warnings": evaluation.get("warnings") or []}))
    else:
        print(summary_table(evaluation, gates))
        for failed in (g for g in gates if not g["passed"]):
            print(failed["message"], file=sys.stderr)
    return code
