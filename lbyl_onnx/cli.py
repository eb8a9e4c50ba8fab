"""The ``lbyl-onnx`` command: parse options, run the pipeline, print the summary, exit."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from .api import check_writable, list_units, prune_file, write_report
from .config import CRITERION_NAMES, INPUT_RANGES, METHOD_NAMES, OptionError, PruneConfig
from .config.options import ONLY_INPUT
from .errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_VALIDATED,
    EXIT_OK,
    EXIT_USAGE,
    LbylError,
    UsageError,
    ValidationFailed,
    first_line,
    human_bytes,
    size_problem,
)
from .report import UnitRecord, format_report, format_units
from .version import __version__

EPILOG = """\b
Examples:
  lbyl-onnx model.onnx small.onnx                     # LBYL, 30% of channels per layer
  lbyl-onnx model.onnx small.onnx --closed-form       # LBYL as published: seconds, weaker
  lbyl-onnx model.onnx small.onnx --ratio 0.2 --method nm
  lbyl-onnx model.onnx small.onnx --method auto       # per layer, whichever moves outputs least
  lbyl-onnx model.onnx small.onnx --exclude 'stem*' --ratio-for 'layer4*=0.5'
  lbyl-onnx model.onnx small.onnx --input-data input:batch.npy --report report.json
  lbyl-onnx model.onnx small.onnx --calibration-data samples.npz   # with real inputs
  lbyl-onnx model.onnx small.onnx --target-macs 0.6 --round-to 8   # a budget, not a ratio
  lbyl-onnx model.onnx small.onnx --target-latency 0.7 --round-to 16  # 30% faster, here
  lbyl-onnx model.onnx small.onnx --target-macs 0.7 --target-latency 0.76 --round-to 16
  lbyl-onnx resnet.onnx small.onnx --prune-residual   # also the convs feeding residual Adds
  lbyl-onnx model.onnx --list                         # what would be pruned, and why not

\b
Exit codes:
  0  done (OUT written, validation passed or --no-check)
  1  internal error (a bug: please report it with -v output)
  2  bad usage, unreadable, invalid or too large input, unusable output path, failed
     write (disk full...)
  3  validation failed: the pruned model does not run or changed its outputs' form;
     OUT is not written
  4  OUT written, but validation could not run (e.g. the original needs custom ops)
  130  interrupted (Ctrl-C): nothing written, no temporary file left
"""


FLAGS = {
    "ratio": "--ratio",
    "target_macs": "--target-macs",
    "target_params": "--target-params",
    "target_latency": "--target-latency",
    "round_to": "--round-to",
    "min_keep": "--min-keep",
    "method": "--method",
    "criterion": "--criterion",
    "exclude": "--exclude",
    "ratio_for": "--ratio-for",
    "check": "--check",
    "check=False": "--no-check",
    "check_n": "--check-n",
    "input_shapes": "--input-shape",
    "input_data": "--input-data",
    "input_range": "--input-range",
    "calibration_data": "--calibration-data",
    "synthetic_calibration": "--synthetic-calibration/--closed-form",
    "synthetic_calibration=True": "--synthetic-calibration",
    "synthetic_calibration=False": "--closed-form",
    "sequential": "--sequential/--independent",
    "sequential=True": "--sequential",
    "sequential=False": "--independent",
    "bias_correction": "--bias-correction/--no-bias-correction",
    "bias_correction=True": "--bias-correction",
    "bias_correction=False": "--no-bias-correction",
    "prune_residual": "--prune-residual",
}
"""The flag of each option of :class:`PruneConfig` the command line sets (``field``, or
``field=value`` for a switch's side): how :class:`OptionError` messages name them here."""


def flag(option: str) -> str:
    """``option`` (``field`` or ``field=value``, as :class:`OptionError` names it) as typed on
    the command line: ``ratio_for`` -> ``--ratio-for``, ``sequential=False`` ->
    ``--independent``, ``method=lbyl`` -> ``--method lbyl``."""
    if option in FLAGS:
        return FLAGS[option]
    name, _, value = option.partition("=")
    return f"{FLAGS[name]} {value}"


def _parse_shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition(":")
    try:
        values = [int(d) for d in dims.split(",")]
    except ValueError:
        values = []
    if not sep or not name or not values or any(v < 1 for v in values):
        raise UsageError(f"--input-shape '{text}' is not NAME:D0,D1,... with positive integers")
    return name, values


def _parse_ratio_for(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = float("nan")
    if not sep or not pattern or ratio != ratio:
        raise UsageError(f"--ratio-for '{text}' is not NAME_OR_GLOB=RATIO")
    return pattern, ratio


def _load_input_data(text: str) -> tuple[str, np.ndarray]:
    name, sep, path = text.partition(":")
    if not sep or not name or not path:
        raise UsageError(f"--input-data '{text}' is not NAME:FILE.npy")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--input-data file not found: {path}")
    if file.suffix not in (".npy", ".npz"):
        raise UsageError(f"--input-data file must be .npy or .npz: {path}")
    arrays = _read_arrays(file, "--input-data", only=name)
    if ONLY_INPUT not in arrays and name not in arrays:
        raise UsageError(f"--input-data {path} has no array named '{name}'")
    return name, arrays.get(name, arrays.get(ONLY_INPUT))


def _load_calibration(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``--calibration-data``: a ``.npz`` (arrays named like the inputs), or a
    ``.npy`` (one array, for the model's only input: :data:`ONLY_INPUT`)."""
    if not path.is_file():
        raise UsageError(f"--calibration-data file not found: {path}")
    arrays = _read_arrays(path, "--calibration-data")
    if not arrays:
        raise UsageError(f"--calibration-data {path} holds no array")
    if len({len(a) for a in arrays.values()}) != 1:
        raise UsageError(f"--calibration-data {path} needs arrays with the same number of samples")
    return arrays


_NUMPY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)
"""What NumPy and ``zipfile`` raise on a file that is not what it says."""


def _read_arrays(path: Path, flag: str, only: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (one, under :data:`ONLY_INPUT`) or ``.npz`` file (``only``:
    that one, where the file has it), told apart by their content. Every header is read and
    checked before any array is: no Python objects (pickles are never loaded), as many bytes
    as the header claims, within :func:`~lbyl_onnx.errors.size_problem`'s limit; then each
    array must hold at least one value, along at least one axis (samples)."""
    try:
        with open(path, "rb") as stream:
            magic = stream.read(6)
        if magic == np.lib.format.MAGIC_PREFIX:
            with open(path, "rb") as stream:
                _check_header(stream, path.stat().st_size, f"{flag} {path}")
            arrays = {ONLY_INPUT: np.load(path, allow_pickle=False)}
        elif magic[:2] == b"PK":
            arrays = _read_npz(path, flag, only)
        else:
            raise UsageError(f"{flag} {path} is not a NumPy file (.npy or .npz)")
    except _NUMPY_ERRORS as error:
        raise UsageError(
            f"{flag} {path} is not a readable NumPy file: {first_line(error)}"
        ) from error
    for name, array in arrays.items():
        what = f"{flag} {path}" + (f" array '{name}'" if name != ONLY_INPUT else "")
        if array.ndim == 0:
            raise UsageError(f"{what} is a single value (a 0-d array), not samples")
        if array.size == 0:
            raise UsageError(f"{what} is empty (shape {list(array.shape)}): no sample")
    return arrays


def _read_npz(path: Path, flag: str, only: str | None) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` (``only``: that one), each member's header checked first."""
    with zipfile.ZipFile(path) as archive:
        members = {}
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if only is not None and name != only:
                continue
            if not info.filename.endswith(".npy"):
                raise UsageError(f"{flag} {path}: member '{info.filename}' is not an array (.npy)")
            with archive.open(info) as member:
                _check_header(member, info.file_size, f"{flag} {path} array '{name}'")
            members[name] = info.filename
    with np.load(path, allow_pickle=False) as data:
        return {name: np.asarray(data[name]) for name in members}


def _check_header(stream, size: int, what: str) -> None:
    """Read a ``.npy`` header from ``stream`` (a file or archive member of ``size`` bytes)
    and refuse, before any data is read, an array of Python objects, one whose data the
    file does not hold, and one over the size limit."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise UsageError(f"{what} is in .npy format {version[0]}.{version[1]}, not 1.0 or 2.0")
    if dtype.hasobject:
        raise UsageError(f"{what} holds Python objects (a pickle), which are never loaded")
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - stream.tell()
    if claimed > held:
        raise UsageError(
            f"{what} claims {list(shape)} {dtype} ({human_bytes(claimed)}), but the file "
            f"holds {human_bytes(held)} of data: truncated or corrupt"
        )
    if problem := size_problem(what, shape, dtype.itemsize):
        raise UsageError(problem)


class _Command(click.Command):
    """The command, where an interrupt (SIGINT, Ctrl-C) ends it with one line and exit code
    130 (click's own answer is ``Aborted!`` and 1), while parsing the options as while
    running: temporary files are removed on the way out (``finally``), so nothing is left."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted()


def _interrupted() -> None:
    """One line on stderr, exit 130."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed: the exit code says it
        click.echo("interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


@click.command(
    cls=_Command, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=True, path_type=Path))
@click.argument("output_path", metavar="OUT", required=False, type=click.Path(path_type=Path))
@click.option(
    "--ratio",
    type=float,
    help="Fraction of output channels removed in each prunable layer, in [0, 1).  [default: 0.3]",
)
@click.option(
    "--target-macs",
    type=float,
    metavar="F",
    help="Keep this fraction of the model's MACs, allocating per-layer ratios globally "
    "(least damage per MAC saved) instead of one --ratio. The damage is measured on "
    "--calibration-data, else on synthetic inputs; exit 2 when the budget is out of reach.",
)
@click.option(
    "--target-params",
    type=float,
    metavar="F",
    help="Keep this fraction of the model's parameters (like --target-macs).",
)
@click.option(
    "--target-latency",
    type=float,
    metavar="F",
    help="Keep this fraction of the model's onnxruntime latency (like --target-macs), "
    "each layer's time per channel profiled here: CPU, one thread, at --input-shape (batch "
    "included; default batch 1). The widths follow this machine's timings. With --target-macs "
    "or --target-params, a limit met as well: the MACs as budgeted, and at least this much "
    "faster.",
)
@click.option(
    "--round-to",
    default=1,
    show_default=True,
    type=int,
    metavar="K",
    help="Kept channel counts are multiples of K (8 suits tensor cores), never below K.",
)
@click.option(
    "--min-keep",
    default=0.0,
    show_default=True,
    type=float,
    metavar="F",
    help="Never keep fewer than this fraction of any layer's channels.",
)
@click.option(
    "--method",
    default="lbyl",
    show_default=True,
    type=click.Choice(list(METHOD_NAMES)),
    help="lbyl: many-to-one compensation (calibrated on synthetic inputs unless "
    "--closed-form or --calibration-data); lbyl-nn: closed-form lbyl with non-negative "
    "coefficients (exact wherever the kept channels agree in sign); nm: Neuron Merging; "
    "prune: plain removal; auto: per unit, the closed form whose outputs move least, "
    "measured in onnxruntime on --calibration-data or else on synthetic inputs.",
)
@click.option(
    "--criterion",
    type=click.Choice(list(CRITERION_NAMES)),
    help="Which channels go: lowest L2 or L1 norm of the filter, nearest the geometric "
    "median, or (reconstruction) those the kept ones rebuild best in the consumers' output, "
    "chosen greedily from the activations in sequential calibration. Default: "
    "reconstruction with --calibration-data, l2 otherwise (docs/benchmarks.md, Choosing "
    "channels from the activations).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="NAME_OR_GLOB",
    help="Leave this producer node untouched (repeatable).",
)
@click.option(
    "--ratio-for",
    multiple=True,
    metavar="NAME_OR_GLOB=R",
    help="Use ratio R for matching producer nodes (repeatable; first match wins).",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Validate the output against the input in onnxruntime.",
)
@click.option(
    "--check-n",
    default=8,
    show_default=True,
    type=int,
    help="Random samples for validation (batch size when the batch is dynamic).",
)
@click.option(
    "--input-shape",
    multiple=True,
    metavar="NAME:D0,D1,...",
    help="Shape of an input with dynamic dimensions, for validation and MACs.",
)
@click.option(
    "--input-data",
    multiple=True,
    metavar="NAME:FILE.npy",
    help="Real samples for validation instead of random ones.",
)
@click.option(
    "--input-range",
    type=click.Choice(list(INPUT_RANGES)),
    help="How the model's image inputs are normalised (pixels scaled to [0, 1] or [-1, 1], "
    "ImageNet mean/std, or raw [0, 255]), for the synthetic inputs that LBYL calibrates on "
    "by default, and that --target-macs and --method auto measure on. Default: estimated "
    "from the model, as the report says.",
)
@click.option(
    "--prune-residual",
    is_flag=True,
    help="Also prune residual groups: every conv feeding the same chain of residual Adds "
    "loses the same channels, and every reader of the chain absorbs the compensation.",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=None,
    help="Data-free: fold the mean that compensation leaves of each removed channel into the "
    "consumers' biases, where BatchNormalization statistics give the means. Default: in "
    "depthwise groups only.",
)
@click.option(
    "--calibration-data",
    "calibration_path",
    metavar="FILE.npz",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Unlabelled, preprocessed samples (arrays named like the inputs): solve the "
    "compensation from measured activations, with bias correction.",
)
@click.option(
    "--synthetic-calibration/--closed-form",
    default=None,
    help="How compensation is solved without --calibration-data. Default, for --method lbyl: "
    "calibrated as with --calibration-data on synthetic images made for the model (1/f "
    "noise, shapes and edges, scaled as --input-range or as estimated from the model; up to "
    "256, within 512 MiB): no data needed, slower than the closed form (docs/benchmarks.md, "
    "--synthetic-calibration); where the inputs cannot be synthesised or the model does not "
    "run on them, it falls back to the closed form with a warning. --synthetic-calibration: "
    "insist (exit 2 where it cannot), also for the other methods (their bias correction). "
    "--closed-form: the methods as published, from the weights alone, in seconds.",
)
@click.option(
    "--sequential/--independent",
    default=None,
    help="When --method lbyl is calibrated (the default, unless --closed-form): solve the "
    "layers in graph order, each against the original's activations with the earlier layers "
    "already pruned, so that it also undoes what they lost (the default there); or each on "
    "the original's activations alone, as if it were the only one pruned: faster, less "
    "accurate (docs/benchmarks.md, Sequential calibration).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Also write the report as JSON (written after OUT). '-' or /dev/stdout: to standard "
    "output, the summary then going to standard error; /dev/null: not written.",
)
@click.option(
    "--save-as-external-data", is_flag=True, help="Write the weights to OUT.data beside OUT."
)
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="Print the units found and declined (with reasons); write nothing.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every unit and reason; tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors and warnings only.")
@click.version_option(__version__, "--version", prog_name="lbyl-onnx")
def main(**options) -> None:
    """Remove channels from the convolutions of IN and restore accuracy without data.

    Finds Conv -> [BatchNormalization] -> activation -> Conv chains (and their fully
    connected equivalents), removes --ratio of the first layer's output channels, folds a
    compensation into the layers that read them, checks the result in onnxruntime and
    writes OUT. IN is never modified.
    """
    report_to_stdout = _report_target(options["report_path"]) == "stdout"
    try:
        code = _run(SimpleNamespace(**options))
    except ValidationFailed as error:
        if error.report is not None and not options["quiet"]:
            click.echo(format_report(error.report, options["verbose"]), err=report_to_stdout)
        click.echo(f"error: {error} (OUT not written)", err=True)
        code = error.exit_code
    except LbylError as error:
        if options["verbose"]:
            traceback.print_exc()
        message = error.spelled(flag) if isinstance(error, OptionError) else str(error)
        click.echo(f"error: {message}", err=True)
        code = error.exit_code
    except MemoryError as error:  # what no check up front foresaw: the machine's limit
        if options["verbose"]:
            traceback.print_exc()
        click.echo(
            f"error: out of memory ({first_line(error)}): the model or its inputs are too "
            "large for this machine",
            err=True,
        )
        code = EXIT_USAGE
    except Exception as error:  # a bug: one line, traceback with -v
        if options["verbose"]:
            traceback.print_exc()
        click.echo(f"internal error: {type(error).__name__}: {error}", err=True)
        code = EXIT_INTERNAL
    sys.exit(code)


def _list(o: SimpleNamespace) -> int:
    """``--list``: the units found and declined, with reasons."""
    units, declined = list_units(o.input_path, o.prune_residual)
    records = [
        UnitRecord(
            u.name,
            u.producer.op_type,
            u.channels,
            u.channels,
            "-",
            0.0,
            [c.node.name or c.node.output[0] for c in u.consumers],
            u.notes,
        )
        for u in units
    ]
    click.echo(format_units(records, declined))
    return EXIT_OK


def _options(o: SimpleNamespace) -> PruneConfig:
    """The options' record, from the flags (files read, texts parsed; checked later, by the
    library)."""
    return PruneConfig(
        ratio=0.3 if o.ratio is None else o.ratio,
        target_macs=o.target_macs,
        target_params=o.target_params,
        target_latency=o.target_latency,
        round_to=o.round_to,
        min_keep=o.min_keep,
        method=o.method,
        criterion=o.criterion,
        exclude=tuple(o.exclude),
        ratio_for=tuple(_parse_ratio_for(t) for t in o.ratio_for),
        check=o.check,
        check_n=o.check_n,
        input_shapes=dict(_parse_shape(t) for t in o.input_shape) or None,
        input_data=dict(_load_input_data(t) for t in o.input_data) or None,
        input_range=INPUT_RANGES.get(o.input_range),
        calibration_data=_load_calibration(o.calibration_path) if o.calibration_path else None,
        synthetic_calibration=o.synthetic_calibration,
        bias_correction=o.bias_correction,
        sequential=o.sequential,
        prune_residual=o.prune_residual,
    )


def _check_typed(o: SimpleNamespace) -> None:
    """The checks of what was typed that the options' record cannot make
    (:func:`~lbyl_onnx.config.validate_options` makes all the others): ``--ratio`` typed
    beside a budget (the record's ``ratio`` always has a value), and ``--closed-form``
    (from the weights alone, here) beside ``--calibration-data`` (in the library,
    ``synthetic_calibration=False`` with calibration data only says "not synthetic")."""
    if o.ratio is not None and any(
        v is not None for v in (o.target_macs, o.target_params, o.target_latency)
    ):
        raise UsageError(
            "give --ratio or a --target-macs/--target-params/--target-latency budget, not both"
        )
    if o.synthetic_calibration is False and o.calibration_path is not None:
        raise UsageError("give --calibration-data or --closed-form, not both")


def _run(o: SimpleNamespace) -> int:
    """The command's work, with ``o`` holding the parsed options; returns the exit code."""
    if o.list_only:
        return _list(o)
    if o.output_path is None:
        raise UsageError("missing OUT (or pass --list to only inspect IN)")
    _check_typed(o)
    target = _report_target(o.report_path)
    if target == "file":
        _check_report_path(o)
    if o.save_as_external_data:
        data = o.output_path.resolve().parent / f"{o.output_path.name}.data"
        check_writable(o.input_path, data, "OUT's external data file")
    config = _options(o)
    show = sys.stderr.isatty() and not o.quiet
    bars = []

    def progress(done: int, total: int) -> None:
        if not show or total < 20:
            return
        if not bars:
            bars.append(click.progressbar(length=total, label="units", file=sys.stderr))
            bars[0].__enter__()
        bars[0].update(done - bars[0].pos)

    try:
        report = prune_file(o.input_path, o.output_path, config, o.save_as_external_data, progress)
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)
    if target == "file":
        with _after_out():
            write_report(o.report_path, report)
    if not o.quiet:
        summary = target == "stdout"  # then stdout holds the JSON alone
        click.echo(format_report(report, o.verbose), err=summary)
        click.echo(f"wrote {o.output_path}", err=summary)
    else:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
    if target in ("stdout", "stderr"):
        _write_stream(report.to_json(), target)
    if report.validation is not None and report.validation.status == "unavailable":
        click.echo(f"warning: validation could not run: {report.validation.message}", err=True)
        return EXIT_NOT_VALIDATED
    return EXIT_OK


_STREAMS = {
    "stdout": ("-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"),
    "stderr": ("/dev/stderr", "/dev/fd/2", "/proc/self/fd/2"),
    "null": ("/dev/null",),
}
"""The ``--report`` paths that are written to a stream (or not at all), never replaced."""


def _report_target(path: Path | None) -> str | None:
    """Where ``--report`` goes: ``stdout`` or ``stderr`` (the paths of :data:`_STREAMS`, or
    the very file the stream is: ``--report r.json > r.json``), ``null`` (``/dev/null``:
    not written), ``file``; None without ``--report``."""
    if path is None:
        return None
    text = str(path) if str(path) == "-" else os.path.abspath(path)
    for stream, paths in _STREAMS.items():
        if text in paths:
            return stream
    for stream, fd in (("stdout", 1), ("stderr", 2)):
        try:
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                return stream
        except (OSError, ValueError):
            continue
    return "file"


def _check_report_path(o: SimpleNamespace) -> None:
    """Refuse, before any work, a ``--report`` file that cannot be written, or that is OUT
    or the external data file OUT may write (``OUT.data``: with --save-as-external-data,
    and for a model over 2 GB without it)."""
    check_writable(o.input_path, o.report_path, "--report")
    out = o.output_path.resolve()
    data = out.parent / f"{o.output_path.name}.data"
    for path, what in ((out, "OUT"), (data, f"OUT's external data file ({data.name})")):
        same = o.report_path.resolve() == path or (
            path.exists() and o.report_path.exists() and o.report_path.samefile(path)
        )
        if same:
            raise UsageError(f"--report {o.report_path} is {what}; choose another path")


@contextlib.contextmanager
def _after_out() -> Iterator[None]:
    """The report's write, which comes after OUT's: its errors say that OUT was written (the
    exit code stays 2)."""
    try:
        yield
    except UsageError as error:
        raise UsageError(f"{error} (OUT was written)") from error


def _write_stream(text: str, stream: str) -> None:
    """The report's JSON on standard output or error. OUT is written by then: a reader that
    went away (``| head``) is not an error, and any other failure only a warning."""
    try:
        click.echo(text, nl=False, err=stream == "stderr")
        (sys.stderr if stream == "stderr" else sys.stdout).flush()
    except BrokenPipeError:  # no second error when Python flushes the stream at exit
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2 if stream == "stderr" else 1)
    except (OSError, ValueError) as error:
        click.echo(
            f"warning: the report was not written to {stream}: {first_line(error)}", err=True
        )


if __name__ == "__main__":  # pragma: no cover
    main()
