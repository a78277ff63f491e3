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

from ._base.errors import (
    CalibrationError,
    KspecError,
    OptionError,
    OutputError,
    OutputExistsError,
)
from ._base.options import choice, flag, positive_number
from ._base.paths import check_writable, same_file
from ._base.provenance import add_history, primary_header
from ._base.schema import is_flux_units, source_name, standard_reasons
from .io import calibration_summary, open_red, write_red
from .kernels.lsf import MAX_SCATTER, combine_fwhm, round_fwhm, sky_line_fwhm
from .stages import (
    apply_calibration,
    associate_catalog,
    combine_calibrations,
    fit_standards,
    gate_standards,
    header_fwhm,
    measure_resolution,
    measured_fwhm,
    nominal_fwhm,
    scale_to_photometry,
    select_standards,
    star_calibrations,
)
from .stages.combine import check_combine_options
from .stages.fit import METRICS
from .stages.gate import check_gating
from .templates import PreparedTemplates, open_bosz

__all__ = [
    "flux_calibrate",
    "fit_at_resolution",
    "calibrate_file",
    "CalibrationResult",
    "apply_fluxcal",
]


def flux_calibrate(
    ds: xr.Dataset,
    /,
    *,
    catalog,
    bands=None,
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
    wavelength_medium=None,
    check_fwhm: bool = True,
    redden: bool = True,
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
        another survey's catalogue with ``bands``, or :func:`read_catalog`
        output).
    bands : None, str, mapping, path or BandMap
        The catalogue's band map, as for :func:`kspec_xr.read_catalog`:
        ``None`` (RefCat2), a preset name (``"des"``, ``"ozdes"``,
        ``"gaiadr3"``, …), ``{column: (band, system, error_column)}``,
        ``"COL=BAND[:SYSTEM[:ERROR]],..."`` or a ``.toml`` file.
    templates : None, path, xr.DataArray or kx.PreparedTemplates
        Template grid (``None``: the bundled stand-in grid) or a prepared grid.
    fwhm : float, polynomial coefficients, callable or "measure", optional
        Instrument FWHM in Å (a constant, coefficients in λ lowest order
        first, or a function of λ).  Default: ``SPECFWHM`` from the header,
        and where the header has none, measured: on the ``SKY`` spectrum's
        lines, else on the standards, and refused when the stars disagree
        (:func:`fit_at_resolution`); ``"measure"`` always measures it.
    check_fwhm : bool
        Measure the FWHM from the standards also when it is given, and warn
        (``FCALWARN``, HISTORY, QC) when the given one is more than 25 % off.
    redden : bool
        Redden each standard's model by its E(B−V): the catalogue's (an
        E(B−V) column, or RefCat2's ``Ag``/``AGaia``), else fitted to the
        colours with Teff (0–0.5); law G23, R_V = 3.1.  False: no dust.
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
    wavelength_medium : {None, "air", "vacuum"}
        Medium of the exposure's wavelengths.  None: what the file declares
        (``CTYPE1 = 'AWAV'`` air, ``'WAVE'`` vacuum), else **air** (2dfdr's
        solutions are in air and say nothing).  An option that contradicts
        the file warns and wins.  The pixels' vacuum wavelengths meet the
        templates and masks; the output keeps the input's grid and records
        the medium (``FCALMED``).  See :mod:`kspec_xr.stages.medium`.

    Returns
    -------
    xr.Dataset
        The calibrated exposure with every intermediate product.

    Examples
    --------
    >>> out = kx.open_red("run1_red.fits").pipe(
    ...     kx.flux_calibrate, catalog="standards.csv")          # doctest: +SKIP
    """
    # every option checked before any work (the stages check them again when used alone)
    checked = check_options(
        gating=gating,
        sigma=sigma,
        min_stars=min_stars,
        smooth=smooth,
        metric=metric,
        match=match,
        radius=radius,
        check_fwhm=check_fwhm,
        redden=redden,
    )
    gating, sigma, min_stars = checked["gating"], checked["sigma"], checked["min_stars"]
    smooth, metric, match = checked["smooth"], checked["metric"], checked["match"]
    radius, check_fwhm, redden = checked["radius"], checked["check_fwhm"], checked["redden"]
    base = ds.pipe(select_standards).pipe(
        associate_catalog, catalog, method=match, radius=radius, bands=bands
    )
    fitted = fit_at_resolution(
        base,
        templates,
        fwhm=fwhm,
        check_fwhm=check_fwhm,
        redden=redden,
        metric=metric,
        mask_regions=mask_regions,
        cache=cache,
        wavelength_medium=wavelength_medium,
    )
    return (
        fitted.pipe(scale_to_photometry)
        .pipe(
            star_calibrations,
            mask_regions=mask_regions,
            mask_lines=mask_lines,
            wavelength_medium=wavelength_medium,
        )
        .pipe(gate_standards, **gating)
        .pipe(combine_calibrations, sigma=sigma, smooth=smooth, min_stars=min_stars)
        .pipe(apply_calibration)
    )


def check_options(**options) -> dict:
    """Options of :func:`flux_calibrate` checked and normalised, before any work.

    Only the options given are checked: ``gating``, ``sigma``, ``min_stars``,
    ``smooth``, ``metric`` (case-insensitive), ``match``, ``radius``,
    ``check_fwhm``, ``redden``; the others are passed back unchanged.

    Raises
    ------
    OptionError
        A value of the wrong type or out of range, naming the option.
    """
    out = dict(options)
    if "gating" in out:
        out["gating"] = check_gating(out["gating"])
    combine = {k: out[k] for k in ("sigma", "min_stars", "smooth") if k in out}
    if combine:
        defaults: dict = {"sigma": 3.0, "min_stars": 2, "smooth": False}
        checked = check_combine_options(**{**defaults, **combine})
        out.update({k: v for k, v in zip(defaults, checked, strict=True) if k in combine})
    if "metric" in out:
        out["metric"] = choice("metric", out["metric"], METRICS)
    if "match" in out:
        out["match"] = choice("match", out["match"], ("position", "order"))
    if "radius" in out:
        out["radius"] = positive_number("radius", out["radius"])
    for name in ("check_fwhm", "redden"):
        if name in out:
            out[name] = flag(name, out[name])
    return out


#: passes of fit → measure at most, when the FWHM is measured
MEASURE_PASSES = 4


def fit_at_resolution(
    ds: xr.Dataset,
    /,
    templates=None,
    *,
    fwhm=None,
    check_fwhm: bool = True,
    **fit_options,
) -> xr.Dataset:
    """:func:`kspec_xr.fit_standards` at the instrument FWHM, measured when not given.

    ``fwhm`` given (or ``SPECFWHM`` in the header): one fit at it, then, with
    ``check_fwhm``, the FWHM measured on the fitted standards
    (:func:`kspec_xr.stages.measure_resolution`, lazy) for the writer's check.

    Otherwise (no ``SPECFWHM``, or ``fwhm="measure"``) it is measured:

    1. on the sky's emission lines when the exposure has a ``SKY`` spectrum
       (:func:`kspec_xr.kernels.lsf.sky_line_fwhm`: no template involved),
       if at least 3 isolated lines agree to 13 %; else
    2. on the standards: a fit at 3 pixels, the FWHM measured on its stars, a
       fit at that, and so on (secant steps) until the measurement agrees
       with the FWHM of the fit within 3 % (at most :data:`MEASURE_PASSES`
       fits: the stars' parameters and the resolution trade off, so a
       measurement on a fit at the wrong width is biased towards it).  The
       stars must agree to 13 % (robust scatter): where the templates do not
       match the stars' lines (the bundled stand-in grid on real F stars) they
       scatter by 30 % and more and their median is wrong by 2×, and the
       measurement is not used; then
    3. when the header had no ``SPECFWHM`` (not with ``fwhm="measure"``) and
       names a set-up of known resolving power
       (:func:`kspec_xr.stages.nominal_fwhm`, e.g. AAOmega's 580V/385R
       gratings), its nominal FWHM, said so in ``fwhm_source`` and HISTORY;
       else the run is refused.

    Measured FWHMs are rounded to 2 % steps, so that the exposures of one
    setup share a prepared grid.  Measuring computes the standards' fits.
    The result carries ``fwhm_used`` (median Å over the spectrum) and
    ``fwhm_source`` as attributes.

    Raises
    ------
    CalibrationError
        The FWHM had to be measured and could not be, reliably, and the
        set-up has no nominal resolution (the message gives the numbers and
        says to pass ``fwhm``).
    """
    measure = asked_to_measure = isinstance(fwhm, str)
    if measure and fwhm != "measure":
        raise ValueError(
            f"fwhm must be a number, coefficients, a callable or 'measure', not {fwhm!r}"
        )
    if fwhm is None:
        fwhm = header_fwhm(ds, required=False)
        source = "SPECFWHM header card"
        measure = fwhm is None
    else:
        source = "given (fwhm option)"
    measure_options = {
        k: v for k, v in fit_options.items() if k in ("mask_regions", "cache", "wavelength_medium")
    }
    if (measure or check_fwhm) and (templates is None or isinstance(templates, str | os.PathLike)):
        templates = open_bosz(templates)  # once, for every fit and measurement below
    checked = check_fwhm and not isinstance(templates, PreparedTemplates)
    sky = _sky_estimate(ds) if (measure or check_fwhm) else None
    sky_attrs = (
        {"fwhm_sky": sky.fwhm, "fwhm_sky_err": sky.err, "fwhm_sky_lines": sky.n}
        if sky is not None and sky.reliable
        else {}
    )
    if measure:
        if sky is not None and sky.reliable:
            fwhm = round_fwhm(sky.fwhm)
            source = f"measured on {sky.n} sky lines"
            measure, checked = False, True

    def fit_at(fwhm, source: str, checked: bool) -> xr.Dataset:
        fitted = fit_standards(ds, templates, fwhm=fwhm, **fit_options)
        if checked:
            # (a grid prepared by the caller is for the FWHM they chose: not re-checked)
            fitted = measure_resolution(fitted, templates, **measure_options)
        return fitted.assign_attrs(
            fwhm_used=float(fitted.attrs["fit_fwhm_median"]), fwhm_source=source, **sky_attrs
        )

    if not measure:
        return fit_at(fwhm, source, checked)
    wave = np.asarray(ds["wavelength"].values, dtype=float)
    trial = round_fwhm(3.0 * float(np.median(np.diff(wave))))
    tried: list[tuple[float, float]] = []
    for _ in range(MEASURE_PASSES):
        fitted = fit_standards(ds, templates, fwhm=trial, **fit_options)
        fitted = measure_resolution(fitted, templates, **measure_options)
        found = measured_fwhm(fitted)
        if not np.isfinite(found["fwhm"]):
            raise CalibrationError(
                f"{source_name(ds)}: the header has no SPECFWHM and the instrument FWHM could not "
                "be measured on any standard star; pass fwhm=... (CLI --fwhm, CALIBFLUX_FWHM)"
            )
        tried.append((trial, found["fwhm"]))
        if abs(found["fwhm"] / trial - 1.0) < 0.03:
            break
        trial = round_fwhm(_next_trial(tried))
    if not found["reliable"]:
        values = np.asarray(fitted["std_fwhm"].values, dtype=float)
        values = values[np.isfinite(values)]
        spread = f"{values.min():.2g}-{values.max():.2g} A" if values.size else "none"
        unreliable = (
            f"{found['n']} standards give {spread} (robust scatter "
            f"{100 * found['scatter']:.0f} %, at most {100 * MAX_SCATTER:.0f} % allowed; the "
            "templates do not match these stars' lines well enough)"
        )
        nominal = nominal_fwhm(ds) if not asked_to_measure else None
        if nominal is None:
            raise CalibrationError(
                f"{source_name(ds)}: the header has no SPECFWHM and the instrument FWHM cannot be "
                f"measured reliably: {unreliable} and there is no SKY spectrum with clean lines"
                "; pass fwhm=... (CLI --fwhm, CALIBFLUX_FWHM)"
            )
        value, setup = nominal
        return add_history(
            fit_at(value, f"nominal, {setup}", checked=True),
            f"fit_at_resolution: no SPECFWHM, no SKY lines, and the FWHM measured on the "
            f"standards is not reliable: {unreliable}; calibrated at the nominal "
            f"{value:.3g} A of {setup}",
        )
    passes = ", ".join(f"{a:.3g} -> {b:.3g}" for a, b in tried)
    return add_history(
        fitted.assign_attrs(
            fwhm_used=float(tried[-1][0]),
            fwhm_source=f"measured on {found['n']} standards",
            fwhm_passes=passes,
        ),
        f"fit_at_resolution: FWHM measured on {found['n']} standards (fit FWHM -> measured, A: "
        f"{passes})",
    )


def _sky_estimate(ds: xr.Dataset):
    """The FWHM of the exposure's ``SKY`` spectrum's lines, or None without one."""
    if "SKY" not in ds or ds["SKY"].dims != ("wavelength",):
        return None
    wave = np.asarray(ds["wavelength"].values, dtype=float)
    guess = 3.0 * float(np.median(np.diff(wave)))
    widths = sky_line_fwhm(wave, np.asarray(ds["SKY"].values, dtype=float), guess=guess)
    return combine_fwhm(widths, np.full(widths.size, np.nan))


def _next_trial(tried: list[tuple[float, float]]) -> float:
    """The next FWHM to fit at: the measurement, or the secant's fixed point m(f) = f."""
    f1, m1 = tried[-1]
    if len(tried) >= 2:
        f0, m0 = tried[-2]
        if f1 != f0:
            slope = (m1 - m0) / (f1 - f0)
            if 0.0 <= slope < 0.9:
                guess = m1 + slope * (m1 - f1) / (1.0 - slope)
                return float(np.clip(guess, 0.5 * m1, 2.0 * m1))
    return float(m1)


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
        flag = is_flux_units(ds["flux"].attrs.get("units"))
    return "complete" if flag is True else "uncalibrated"


#: an output is at most this many times its input's size (calibration products
#: and float64 arrays), for the free-space check before any work
_OUTPUT_GROWTH = 3


def _check_output(source: Path, output: Path, *, overwrite: bool, resume: bool, in_place: bool):
    """Decide what to do with ``output`` before any work: 'write', 'replace' or 'skip'."""
    if same_file(source, output) and not in_place:
        raise KspecError(
            f"the output {output} is the input {source}; kspec_xr never overwrites its input "
            "(choose another output; apply_fluxcal calibrates in place on purpose)"
        )
    if output.is_dir():
        raise OutputError(f"cannot write {output}: it is a folder; give a file name")
    check_writable(output, needed=_OUTPUT_GROWTH * source.stat().st_size)
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


def _switch(name: str, value) -> bool:
    """A pipeline argument that is on or off: a bool, 0/1 or yes/no-like text; else an error."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("0", "1"):
        return text in ("true", "1")
    if text in ("t", "true", "yes", "y", "on", "f", "false", "no", "n", "off", ""):
        return text in ("t", "true", "yes", "y", "on")
    raise OptionError(f"{name} = {value!r}: give true or false (yes/no, 1/0, on/off)")


def _fwhm_argument(value):
    """``CALIBFLUX_FWHM``: None (unset, empty or 0), a FWHM in Å, or 'measure'."""
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, str) and value.strip().lower() == "measure":
        return "measure"
    try:
        return positive_number("CALIBFLUX_FWHM", float(value))
    except (TypeError, ValueError):
        raise OptionError(
            f"CALIBFLUX_FWHM = {value!r}: give the instrument FWHM in Å, or 'measure'"
        ) from None


def apply_fluxcal(red_filename: str | os.PathLike, args: dict) -> bool:
    """The reference pipeline's entry point: calibrate a RED file in place.

    Parameters
    ----------
    red_filename : path
        RED file, replaced atomically by its calibrated version.
    args : dict
        ``CALIBFLUX`` (do nothing unless true), ``CALIBFLUX_CATALOG`` (path,
        required), ``CALIBFLUX_BANDS`` (the catalogue's band map: a preset
        name, ``COL=BAND[:SYSTEM[:ERROR]],...`` or a ``.toml`` path; default
        RefCat2), ``CALIBFLUX_FWHM`` (Å; falls back to ``SPECFWHM``),
        ``CALIBFLUX_METRIC`` (``chi2`` | ``huber``), ``CALIBFLUX_SMOOTH``,
        and optionally ``CALIBFLUX_TEMPLATES`` (grid path) and
        ``CALIBFLUX_MEDIUM`` (``air`` | ``vacuum``: the medium of the file's
        wavelengths; default: what ``CTYPE1`` declares, else air).

    Returns
    -------
    bool
        True when the file was calibrated, False when ``CALIBFLUX`` is off.
    """
    if not _switch("CALIBFLUX", args.get("CALIBFLUX", False)):
        return False
    catalog = args.get("CALIBFLUX_CATALOG")
    if not catalog:
        raise CalibrationError(
            "CALIBFLUX is set but CALIBFLUX_CATALOG is not: give the standard-star catalogue path"
        )
    fwhm = _fwhm_argument(args.get("CALIBFLUX_FWHM"))
    medium = args.get("CALIBFLUX_MEDIUM")
    medium = str(medium).strip().lower() if medium not in (None, "") else None
    calibrate_file(
        red_filename,
        in_place=True,
        catalog=catalog,
        bands=args.get("CALIBFLUX_BANDS") or None,
        templates=args.get("CALIBFLUX_TEMPLATES"),
        fwhm=fwhm,
        metric=str(args.get("CALIBFLUX_METRIC", "chi2")),
        smooth=_switch("CALIBFLUX_SMOOTH", args.get("CALIBFLUX_SMOOTH", False)),
        wavelength_medium=medium,
    )
    return True
