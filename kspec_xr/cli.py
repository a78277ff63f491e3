"""The ``kspec-xr`` command line: ``fluxcal``, ``batch`` and ``demo``.

Errors in the input (a ``KspecError``: bad file, missing catalogue, no
standard, existing output, …) and of the system (disk full, permission
denied) print one line and exit with status 2; anything else is a bug,
printed as one "internal error" line with exit status 1.  ``--debug``,
anywhere on the line, shows the traceback instead.

The calibration itself (numpy, xarray, astropy, scipy …) is imported by the
subcommand that needs it, so that ``kspec-xr --help`` answers at once; numpy
is started without transparent huge pages (:mod:`kspec_xr._base.memory`).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import sys

from ._base.errors import KspecError
from ._base.memory import without_huge_pages

#: names of the gating thresholds (kspec_xr.stages.gate.GATE_DEFAULTS), here so
#: that parsing --gate does not import the calibration
_GATE_NAMES = (
    "min_valid_fraction",
    "min_snr",
    "max_phot_rms",
    "max_chi2_ratio",
    "zp_limit",
    "zp_nsigma",
    "tilt_limit",
    "tilt_nsigma",
)

__all__ = ["main"]


def _add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        required=True,
        help="standard-star catalogue (ATLAS-RefCat2 CSV, or another survey's with --bands)",
    )
    p.add_argument(
        "--bands",
        metavar="MAP",
        help="which catalogue columns are which filters: a preset (des, des_psf, ozdes, sdss, "
        "panstarrs, gaiadr3, gaia_xp, legacy, legacy_north, twomass, refcat2), "
        "COL=BAND[:SYSTEM[:ERRCOL]],... (SYSTEM AB (default), Vega or m_AB-m_cat; e.g. "
        "g=decam2014-g,Jmag=twomass-J:Vega:e_Jmag) or a .toml file (default: ATLAS-RefCat2)",
    )
    p.add_argument(
        "--templates", help="BOSZ directory or packed cube (default: bundled stand-in grid)"
    )
    p.add_argument(
        "--fwhm",
        metavar="A|measure",
        help="instrument FWHM in Å, or 'measure' (default: the SPECFWHM header card; without "
        "one, measured from the standards)",
    )
    p.add_argument(
        "--no-fwhm-check",
        dest="check_fwhm",
        action="store_false",
        help="do not measure a given FWHM on the standards to check it (faster)",
    )
    p.add_argument(
        "--no-redden",
        dest="redden",
        action="store_false",
        help="do not redden the standards' models (default: E(B-V) from the catalogue, else "
        "fitted to the colours)",
    )
    p.add_argument(
        "--metric", type=str.lower, choices=("chi2", "huber"), default="chi2", help="template score"
    )
    p.add_argument("--smooth", action="store_true", help="Savitzky-Golay smooth the calibration")
    p.add_argument(
        "--match",
        type=str.lower,
        choices=("position", "order"),
        default="position",
        help="associate standards with catalogue rows by RA/Dec (default) or by row order "
        "(only for a catalogue of exactly one row per standard, in fiber order)",
    )
    p.add_argument("--match-radius", type=float, default=2.0, metavar="ARCSEC", help="match radius")
    p.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a threshold of the standard-star gating, e.g. --gate zp_limit=0.2 "
        "(names: see kspec_xr.gating.GATE_DEFAULTS); repeatable",
    )
    medium = p.add_mutually_exclusive_group()
    medium.add_argument(
        "--air",
        dest="medium",
        action="store_const",
        const="air",
        help="the wavelengths are in air (default: what CTYPE1 declares, AWAV|WAVE, else air)",
    )
    medium.add_argument(
        "--vacuum",
        dest="medium",
        action="store_const",
        const="vacuum",
        help="the wavelengths are in vacuum",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kspec-xr", description="Flux calibration of K-SPEC RED files with standard stars."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (anywhere on the line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fluxcal", help="flux-calibrate one RED file")
    p.add_argument("input", help="RED file (2dfdr layout)")
    p.add_argument("-o", "--output", required=True, help="calibrated RED file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--qc-plot", metavar="PNG", help="save the QC figure of the calibration")
    _add_calibration_options(p)

    p = sub.add_parser(
        "batch", help="flux-calibrate many RED files on dask.distributed (one task per file)"
    )
    p.add_argument("inputs", nargs="*", metavar="FILE_OR_GLOB", help="RED files or quoted globs")
    p.add_argument(
        "--out-dir", required=True, help="folder of the outputs (same file names), created"
    )
    p.add_argument("--workers", type=int, help="worker processes of a local cluster")
    p.add_argument("--scheduler", help="address of a running dask scheduler (tcp://host:port)")
    p.add_argument(
        "--nightly", action="store_true", help="recorded only; nightly transfer functions: later"
    )
    p.add_argument("--resume", action="store_true", help="skip complete outputs, redo partial")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_calibration_options(p)

    p = sub.add_parser("demo", help="simulate an exposure, calibrate it and report the accuracy")
    p.add_argument("--dir", default="kspec_xr_demo", help="folder for the demo files")
    p.add_argument("--seed", type=int, default=1)
    return parser


def _gating(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in _GATE_NAMES:
            raise KspecError(
                f"--gate {item!r}: give NAME=VALUE with NAME one of {', '.join(_GATE_NAMES)}"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise KspecError(f"--gate {item!r}: {value!r} is not a number") from None
    return out


def _bands(text: str | None):
    """``--bands``: None, a preset name, or the BandMap of COL=BAND,... or of a TOML file.

    Checked here, before any work; a file's map is read here so that batch
    workers do not need the file.
    """
    if text is None:
        return None
    from ._base.bandmap import PRESETS, resolve_bands  # deferred: imports numpy

    layouts, name = resolve_bands(text)
    return name if name in PRESETS and text.strip().lower() == name else layouts[0]


def _fwhm(text: str | None):
    """--fwhm: None, a positive number of Å, or 'measure'."""
    if text is None or text.strip().lower() == "measure":
        return None if text is None else "measure"
    try:
        value = float(text)
    except ValueError:
        raise KspecError(f"--fwhm {text!r} is neither a FWHM in Å nor 'measure'") from None
    if not value > 0 or value == float("inf"):
        raise KspecError(f"--fwhm must be a positive FWHM in Å, not {text}")
    return value


def _calibration_options(args) -> dict:
    """The options of :func:`kspec_xr.flux_calibrate` given on the command line."""
    return {
        "bands": _bands(args.bands),
        "templates": args.templates,
        "fwhm": _fwhm(args.fwhm),
        "check_fwhm": args.check_fwhm,
        "redden": args.redden,
        "metric": args.metric,
        "smooth": args.smooth,
        "match": args.match,
        "radius": args.match_radius,
        "gating": _gating(args.gate),
        "wavelength_medium": args.medium,
    }


def _fluxcal(args) -> int:
    from .pipeline import calibrate_file  # deferred: the calibration's imports take a second
    from .qc import check_plot_path, plot_calibration, standards_summary

    if args.qc_plot:  # a bad QC path is found before any work, not after the output exists
        check_plot_path(args.qc_plot, overwrite=args.overwrite)
    result = calibrate_file(
        args.input,
        args.output,
        catalog=args.catalog,
        overwrite=args.overwrite,
        **_calibration_options(args),
    )
    out = result.dataset
    if out is None:  # pragma: no cover - fluxcal never resumes
        raise KspecError(f"{args.input}: nothing was calibrated")
    if args.qc_plot:
        plot_calibration(out, args.qc_plot, overwrite=args.overwrite)
    print(f"{args.input} -> {args.output}: {standards_summary(out)}")
    for k, reason in enumerate(out["standard_reason"].values):
        if reason:
            fiber = int(out["standard_fiber"].values[k])
            print(f"  rejected standard {k} (fiber {fiber}): {reason}")
    if result.warning:
        print(f"  warning: {result.warning}", file=sys.stderr)
    return 0


def _expand_inputs(patterns: list[str]) -> list[str]:
    """Files named or matched by each argument (globs expanded here, so quoting is safe)."""
    files: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if os.path.isfile(pattern):
            matches = [pattern]
        else:
            matches = sorted(m for m in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(m))
        if not matches:
            raise KspecError(f"{pattern}: no such file (the pattern matches no file)")
        for match in matches:
            key = os.path.realpath(match)
            if key not in seen:
                seen.add(key)
                files.append(match)
    return files


def _batch(args) -> int:
    from .batch import calibrate_many  # deferred: dask.distributed takes a second to import

    if not args.inputs:
        raise KspecError("no input files: give RED files or globs such as 'night/*red.fits'")
    if args.workers is not None and args.scheduler:
        raise KspecError("give either --workers (local cluster) or --scheduler ADDR, not both")
    if args.workers is not None and args.workers < 1:
        raise KspecError(f"--workers {args.workers}: give at least one worker")
    paths = _expand_inputs(args.inputs)
    summary = calibrate_many(
        paths,
        args.out_dir,
        catalog=args.catalog,
        client=args.scheduler or None,
        workers=args.workers,
        nightly=args.nightly,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=True,
        **_calibration_options(args),
    )
    counts = summary["status"].value_counts()
    n_failed = int(counts.get("failed", 0))
    if args.nightly and "nightly_path" in summary.attrs:
        print(f"nightly transfer function: {summary.attrs['nightly_path']}")
    print(
        f"{len(summary)} exposures: {int(counts.get('ok', 0))} ok, "
        f"{int(counts.get('skipped', 0))} skipped, {n_failed} failed; "
        f"summary: {summary.attrs['summary_path']}"
    )
    return 1 if n_failed else 0


@contextlib.contextmanager
def _messages_on_stderr():
    """The library's log (progress, first-run notices) on stderr while a command runs."""
    logger = logging.getLogger("kspec_xr")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kspec-xr`` console script.

    Exit status: 0 done; 1 some exposures of a batch failed, or an internal
    error (a bug: one line, the traceback with ``--debug``); 2 an error in the
    input or the options (one line naming what to fix); 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "numpy" not in sys.modules:  # (numpy reads it on import; see kspec_xr._base.memory)
        without_huge_pages(os.environ)
    debug = "--debug" in argv  # accepted anywhere on the line
    args = _parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    with _messages_on_stderr():
        return _run(args)


def _run(args) -> int:
    prefix = f"kspec-xr {args.command}"
    try:
        if args.command == "fluxcal":
            return _fluxcal(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "demo":
            from .demo import run_demo  # deferred: the calibration's imports take a second

            run_demo(args.dir, seed=args.seed)
            return 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted (no output was left half-written)", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{prefix}: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, KspecError | OSError) else 1
    return 1


def _one_line(err: BaseException) -> str:
    """The message the command line prints for an exception: one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KspecError):
        return f"error: {text}"
    if isinstance(err, OSError):  # disk full, permission denied, …: the system's own words
        where = f" ({err.filename})" if err.filename and str(err.filename) not in text else ""
        return f"error: {text}{where}"
    return (
        f"internal error: {type(err).__name__}: {text} (a bug in kspec_xr: run again with "
        "--debug for the traceback and report it)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
