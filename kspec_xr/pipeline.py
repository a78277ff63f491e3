"""The whole flux calibration: one call on a Dataset, one driver for files.

- :func:`flux_calibrate` chains the stages on a Dataset (lazy on dask);
- :func:`calibrate_file` is the one driver from a RED file to a calibrated
  RED file — the command line, :func:`apply_fluxcal` and every task of
  :func:`kspec_xr.calibrate_many` go through it, so the checks on the output
  (never the input, exists, resume, folder) live in one place;
- :func:`apply_fluxcal` is the reference pipeline's entry point (in place).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from ._base.errors import CalibrationError, KspecError, OutputExistsError, RedFileError
from ._base.paths import same_file
from ._base.provenance import primary_header
from ._base.schema import FLUX_UNITS, standard_reasons
from .io import calibration_summary, open_red, write_red
from .stages import (
    GATE_DEFAULTS,
    apply_calibration,
    associate_catalog,
    combine_calibrations,
    fit_standards,
    gate_standards,
    scale_to_photometry,
    select_standards,
    star_calibrations,
)

__all__ = ["flux_calibrate", "calibrate_file", "CalibrationResult", "apply_fluxcal"]


def flux_calibrate(
    ds: xr.Dataset,
    /,
    *,
    catalog,
    templates=None,
    fwhm=None,
    metric: str = "chi2",
    smooth: bool = False,
    match: str = "position",
    radius: float = 2.0,
    mask_regions="telluric_default",
    mask_lines="stellar_lines_default",
    gating=None,
    sigma: float = 3.0,
    min_stars: int = 2,
    cache=True,
) -> xr.Dataset:
    """Flux-calibrate an exposure with its standard stars.

    The chain ``select_standards → associate_catalog → fit_standards →
    scale_to_photometry → star_calibrations → gate_standards →
    combine_calibrations → apply_calibration``; every stage is public, so a
    script can stop, inspect and re-run any step.

    Parameters
    ----------
    ds : xr.Dataset
        An exposure from :func:`kspec_xr.open_red` (eager or chunked).
    catalog : path, pandas.DataFrame, astropy.table.Table or xr.Dataset
        Standard-star catalogue (ATLAS-RefCat2 CSV, a table with its columns,
        or :func:`read_catalog` output).
    templates : None, path, xr.DataArray or kx.PreparedTemplates
        Template grid (``None``: the bundled stand-in grid) or a prepared grid.
    fwhm : float, optional
        Instrument FWHM in Å (default: ``SPECFWHM`` from the header).
    metric : {"chi2", "huber"}
    smooth : bool
        Savitzky–Golay smoothing of the combined calibration.
    match : {"position", "order"}
        How standards are associated with catalogue rows (``"order"`` only
        for a catalogue of exactly one row per standard, in fiber order).
    radius : float
        Match radius (arcsec).
    mask_regions : str, path, pairs or None
        Telluric / bad bands (default: the bundled telluric bands).
    mask_lines : str, path, pairs or None
        Stellar lines left out of the per-star calibrations.
    gating : mapping, optional
        Thresholds of :func:`kspec_xr.gate_standards` to change from their
        defaults (:data:`kspec_xr.stages.GATE_DEFAULTS`), e.g.
        ``{"zp_limit": 0.2}``.
    sigma : float
        Clipping threshold when combining the stars.
    min_stars : int
        Fewest agreeing stars that make a pixel of the calibration.
    cache : bool or path
        Cache of prepared template grids.

    Returns
    -------
    xr.Dataset
        The calibrated exposure with every intermediate product.

    Examples
    --------
    >>> out = kx.open_red("run1_red.fits").pipe(
    ...     kx.flux_calibrate, catalog="standards.csv")          # doctest: +SKIP
    """
    gating = dict(gating or {})
    unknown = sorted(set(gating) - set(GATE_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown gating option(s) {', '.join(unknown)}; known: {', '.join(GATE_DEFAULTS)}"
        )
    return (
        ds.pipe(select_standards)
        .pipe(associate_catalog, catalog, method=match, radius=radius)
        .pipe(
            fit_standards,
            templates,
            fwhm=fwhm,
            metric=metric,
            mask_regions=mask_regions,
            cache=cache,
        )
        .pipe(scale_to_photometry)
        .pipe(star_calibrations, mask_regions=mask_regions, mask_lines=mask_lines)
        .pipe(gate_standards, **gating)
        .pipe(combine_calibrations, sigma=sigma, smooth=smooth, min_stars=min_stars)
        .pipe(apply_calibration)
    )


@dataclass
class CalibrationResult:
    """What :func:`calibrate_file` did with one exposure."""

    input: str
    output: str
    status: str  #: "ok" or "skipped" (a complete output was kept, ``resume=True``)
    n_standards: int | None = None
    n_used: int | None = None  #: standards that contribute
    n_rejected: int | None = None
    rms: float = math.nan  #: median fractional RMS of the standards' shapes
    rejected: str = ""  #: fiber and reason of every rejected standard
    warning: str = ""  #: a calibration resting on one or two standards
    seconds: float = math.nan
    dataset: xr.Dataset | None = None  #: the calibrated exposure (None when skipped)

    def summary(self) -> dict:
        """The result without the Dataset (a row of a batch summary)."""
        row = asdict(self)
        row.pop("dataset")
        return row


def output_state(path: str | os.PathLike) -> str:
    """'complete' (opens and is flux-calibrated), 'uncalibrated' or 'corrupt'."""
    try:
        ds = open_red(path)
    except Exception:  # any reading failure means a damaged file: redo it
        return "corrupt"
    flag = primary_header(ds).get("FLUXCAL")
    if flag is None:  # a file without the card: judge by the flux units
        flag = ds["flux"].attrs.get("units") == FLUX_UNITS
    return "complete" if flag is True else "uncalibrated"


def _check_output(source: Path, output: Path, *, overwrite: bool, resume: bool, in_place: bool):
    """Decide what to do with ``output`` before any work: 'write', 'replace' or 'skip'."""
    if same_file(source, output) and not in_place:
        raise KspecError(
            f"the output {output} is the input {source}; kspec_xr never overwrites its input "
            "(choose another output; apply_fluxcal calibrates in place on purpose)"
        )
    folder = output.parent
    if not folder.is_dir():
        raise RedFileError(
            f"cannot write {output}: the folder {folder} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RedFileError(f"cannot write {output}: the folder {folder} is not writable")
    if in_place or not output.exists():
        return "replace" if output.exists() else "write"
    state = output_state(output) if resume else None
    if state == "complete":
        return "skip"
    if state == "corrupt" or overwrite:
        return "replace"  # a partial output of an earlier run is redone
    hint = (
        "it is not a flux-calibrated RED file; pass overwrite=True (--overwrite) to replace it"
        if resume
        else "pass overwrite=True (--overwrite) to replace it, or resume=True (--resume) to keep "
        "complete outputs"
    )
    raise OutputExistsError(f"output {output} exists; {hint}")


def calibrate_file(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    catalog,
    overwrite: bool = False,
    resume: bool = False,
    in_place: bool = False,
    **options,
) -> CalibrationResult:
    """Calibrate one RED file into another: open, :func:`flux_calibrate`, compute once, write.

    Parameters
    ----------
    input : path
        The RED file; never changed unless ``in_place``.
    output : path
        The calibrated RED file (written to a temporary file and renamed).
    catalog
        As for :func:`flux_calibrate`.
    overwrite : bool
        Replace an existing ``output``.
    resume : bool
        Keep an existing ``output`` that is a complete calibrated file
        (status ``'skipped'``); redo a damaged one.
    in_place : bool
        Replace ``input`` by its calibrated version (``output`` must be None
        or the input).
    **options
        Passed to :func:`flux_calibrate`.

    Returns
    -------
    CalibrationResult
        The counts, the reasons, the warning and the computed Dataset.

    Raises
    ------
    KspecError
        The output would be the input; the output exists (and neither
        ``overwrite`` nor a complete output with ``resume``); its folder is
        missing or read-only — all before any work.  Any input error of the
        stages, and :class:`CalibrationError` when no standard is usable
        (nothing is written).
    """
    start = time.perf_counter()
    source = Path(input)
    if in_place:
        if output is not None and not same_file(source, Path(output)):
            raise TypeError(
                "calibrate_file(in_place=True) writes the input itself: leave output out"
            )
        output = source
    if output is None:
        raise TypeError("calibrate_file needs an output path (or in_place=True)")
    output = Path(output)
    action = _check_output(source, output, overwrite=overwrite, resume=resume, in_place=in_place)
    if action == "skip":
        return CalibrationResult(str(input), str(output), "skipped", seconds=_since(start))
    out = flux_calibrate(open_red(source), catalog=catalog, **options).compute()
    write_red(out, output, overwrite=action == "replace")
    summary = calibration_summary(out)
    reasons = standard_reasons(out)
    fibers = np.asarray(out["standard_fiber"].values)
    return CalibrationResult(
        input=str(input),
        output=str(output),
        status="ok",
        n_standards=summary["n_standards"],
        n_used=summary["n_used"],
        n_rejected=summary["n_rejected"],
        rms=summary["rms"],
        rejected="; ".join(f"fiber {int(fibers[k])}: {r}" for k, r in enumerate(reasons) if r),
        warning=summary["warning"],
        seconds=_since(start),
        dataset=out,
    )


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "yes", "y", "on")
    return bool(value)


def apply_fluxcal(red_filename: str | os.PathLike, args: dict) -> bool:
    """The reference pipeline's entry point: calibrate a RED file in place.

    Parameters
    ----------
    red_filename : path
        RED file, replaced atomically by its calibrated version.
    args : dict
        ``CALIBFLUX`` (do nothing unless true), ``CALIBFLUX_CATALOG`` (path,
        required), ``CALIBFLUX_FWHM`` (Å; falls back to ``SPECFWHM``),
        ``CALIBFLUX_METRIC`` (``chi2`` | ``huber``), ``CALIBFLUX_SMOOTH``,
        and optionally ``CALIBFLUX_TEMPLATES`` (grid path).

    Returns
    -------
    bool
        True when the file was calibrated, False when ``CALIBFLUX`` is off.
    """
    if not _truthy(args.get("CALIBFLUX", False)):
        return False
    catalog = args.get("CALIBFLUX_CATALOG")
    if not catalog:
        raise CalibrationError(
            "CALIBFLUX is set but CALIBFLUX_CATALOG is not: give the standard-star catalogue path"
        )
    fwhm = args.get("CALIBFLUX_FWHM")
    fwhm = float(fwhm) if fwhm not in (None, "", 0, "0") else None
    calibrate_file(
        red_filename,
        in_place=True,
        catalog=catalog,
        templates=args.get("CALIBFLUX_TEMPLATES"),
        fwhm=fwhm,
        metric=str(args.get("CALIBFLUX_METRIC", "chi2")).lower(),
        smooth=_truthy(args.get("CALIBFLUX_SMOOTH", False)),
    )
    return True
