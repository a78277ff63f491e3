"""Robust statistics across standard stars (NumPy/SciPy kernels, no xarray).

Three jobs, each a function of plain arrays so that the xarray stages
(:mod:`kspec_xr.gating`, :mod:`kspec_xr.calibration`) stay thin:

* :func:`gate_kernel` — per-star diagnostics (valid pixels, S/N, zero point
  and tilt against the median of the others, photometric residuals, fit
  quality) and the decision which stars to reject;
* :func:`combine_kernel` — the clipped, S/N-weighted mean of the per-star
  calibrations around their median, with a variance that includes the
  scatter between the stars;
* :func:`bridge_gaps` — a robust least-squares B-spline of the combined
  calibration whose breakpoints avoid the masked bands, evaluated inside
  them.

Arrays are ``(S, P)`` for per-star spectra (stars, pixels), ``(S,)`` per
star and ``(P,)`` per pixel.
"""

from __future__ import annotations

import numpy as np

from .._base.status import StandardStatus

__all__ = [
    "MAD_TO_SIGMA",
    "robust_sigma",
    "nan_running_mean",
    "gate_kernel",
    "combine_kernel",
    "bridge_gaps",
    "close_short_runs",
    "combine_block",
    "savgol_with_variance",
    "relative_level",
]

#: 1.4826 · MAD is the standard deviation of a normal distribution
MAD_TO_SIGMA = 1.482602218505602

_OK = StandardStatus.OK
_NO_SIGNAL, _FAINT, _PHOTOMETRY = (
    StandardStatus.NO_SIGNAL,
    StandardStatus.FAINT,
    StandardStatus.PHOTOMETRY,
)
_POOR_FIT, _ZERO_POINT, _SHAPE = (
    StandardStatus.POOR_FIT,
    StandardStatus.ZERO_POINT,
    StandardStatus.SHAPE,
)

#: fewest pixels a star must share with the reference to get a level and a tilt
_MIN_OVERLAP = 50


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 · median absolute deviation of the finite values (NaN if none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(v - np.median(v))))


def nan_running_mean(values: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
    """Boxcar mean over ``width`` pixels (last axis) of the valid values; NaN where none."""
    from scipy.ndimage import uniform_filter1d

    ok = valid & np.isfinite(values)
    num = uniform_filter1d(np.where(ok, values, 0.0), width, axis=-1, mode="nearest")
    den = uniform_filter1d(ok.astype(float), width, axis=-1, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-9, num / den, np.nan)


def relative_level(
    cal: np.ndarray, usable: np.ndarray, reference: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Zero point and tilt (mag) of every star's calibration against a reference curve.

    ``zero point = 2.5 · median_λ log10(Cal_s / Cal_ref)``; ``tilt`` is the
    slope of a straight line in ``x`` (−0.5 … +0.5 across the spectrum)
    fitted to ``2.5 log10(Cal_s / Cal_ref)``: the difference in mag between
    the red and the blue end.  NaN for stars with fewer than 50 shared pixels.
    """
    n_star = cal.shape[0]
    zp = np.full(n_star, np.nan)
    tilt = np.full(n_star, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 2.5 * np.log10(cal / reference[None, :])
    ok = usable & np.isfinite(ratio)
    for s in range(n_star):
        sel = ok[s]
        if np.count_nonzero(sel) < _MIN_OVERLAP:
            continue
        y = ratio[s, sel]
        zp[s] = np.median(y)
        xs = x[sel]
        # a robust straight line: least squares after a 3σ clip about the median
        keep = np.abs(y - zp[s]) <= 3.0 * max(robust_sigma(y), 1e-6)
        if np.count_nonzero(keep) >= _MIN_OVERLAP // 2 and np.ptp(xs[keep]) > 0.25:
            tilt[s] = np.polyfit(xs[keep], y[keep], 1)[0]
    return zp, tilt


def gate_kernel(
    counts: np.ndarray,
    var_counts: np.ndarray,
    considered: np.ndarray,
    cal: np.ndarray,
    cal_usable: np.ndarray,
    phot_residual: np.ndarray,
    chi2_red: np.ndarray,
    status: np.ndarray,
    wavelength: np.ndarray,
    *,
    min_valid_fraction: float,
    min_snr: float,
    max_phot_rms: float,
    max_chi2_ratio: float,
    zp_limit: float,
    zp_nsigma: float,
    tilt_limit: float,
    tilt_nsigma: float,
    min_relative: int = 3,
) -> tuple[np.ndarray, ...]:
    """Decide which standards to reject, and why (see :func:`kspec_xr.gate_standards`).

    Parameters
    ----------
    counts, var_counts : (S, P) observed counts and their variance
    considered : (S, P) bool, pixels that should hold starlight (not flagged
        by the data mask, not in a telluric band)
    cal, cal_usable : (S, P) per-star calibrations and where they are valid
    phot_residual : (S, B) m_obs − m_syn − mean offset (NaN where no band)
    chi2_red : (S,) the template fit's χ²/dof
    status : (S,) int, the stars' status so far (0 = still a candidate)
    wavelength : (P,)

    Returns
    -------
    status, valid_fraction, snr, phot_rms, chi2_ratio, zero_point, zp_limit,
    tilt, tilt_limit : (S,) arrays.  ``zero_point`` and ``tilt`` are relative
    to the median of the candidates; the limits are the thresholds applied
    (the larger of the absolute limit and N robust σ).
    """
    status = np.asarray(status).astype("int16").copy()
    n_star = status.size
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = considered & np.isfinite(counts) & np.isfinite(var_counts) & (var_counts > 0)
        positive = valid & (counts > 0)
        n_considered = np.maximum(np.count_nonzero(considered, axis=1), 1)
        valid_fraction = np.count_nonzero(positive, axis=1) / n_considered
        per_pixel = np.where(valid, counts / np.sqrt(var_counts), np.nan)
    snr = np.array(
        [
            np.median(row[np.isfinite(row)]) if np.isfinite(row).any() else np.nan
            for row in per_pixel
        ]
    )
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(phot_residual)
        n_bands = np.count_nonzero(finite, axis=1)
        phot_rms = np.sqrt(np.nansum(np.where(finite, phot_residual, 0.0) ** 2, axis=1))
        phot_rms = np.where(n_bands >= 2, phot_rms / np.sqrt(np.maximum(n_bands, 1)), np.nan)

    def reject(condition, code):
        hit = (status == _OK) & condition
        status[hit] = code

    reject(~(valid_fraction >= min_valid_fraction), _NO_SIGNAL)
    reject(~(snr >= min_snr), _FAINT)
    reject(phot_rms > max_phot_rms, _PHOTOMETRY)

    chi2_ratio = np.full(n_star, np.nan)
    zero_point = np.full(n_star, np.nan)
    tilt = np.full(n_star, np.nan)
    zp_lim = np.full(n_star, np.nan)
    tilt_lim = np.full(n_star, np.nan)
    lam = np.asarray(wavelength, dtype=float)
    x = (lam - 0.5 * (lam[0] + lam[-1])) / (lam[-1] - lam[0])
    every = cal_usable & np.isfinite(cal) & (cal > 0)

    def relative():
        """Zero points and tilts against the median of the current candidates."""
        candidates = status == _OK
        usable = every & candidates[:, None]
        ref = _nanmedian_axis0(np.where(usable, cal, np.nan))
        zp, tl = relative_level(cal, every, ref, x)
        return zp - np.nanmedian(zp[candidates]), tl - np.nanmedian(tl[candidates]), candidates

    # one rule at a time, each judged among the stars the previous ones kept
    if np.count_nonzero(status == _OK) >= min_relative:
        chi2_ratio = chi2_red / np.nanmedian(chi2_red[status == _OK])
        reject(chi2_ratio > max_chi2_ratio, _POOR_FIT)
    if np.count_nonzero(status == _OK) >= min_relative:
        zero_point, tilt, candidates = relative()
        zp_lim[:] = max(zp_limit, zp_nsigma * robust_sigma(zero_point[candidates]))
        reject(np.abs(zero_point) > zp_lim, _ZERO_POINT)
    if np.count_nonzero(status == _OK) >= min_relative:
        _, tilt, candidates = relative()
        tilt_lim[:] = max(tilt_limit, tilt_nsigma * robust_sigma(tilt[candidates]))
        reject(np.abs(tilt) > tilt_lim, _SHAPE)
    return status, valid_fraction, snr, phot_rms, chi2_ratio, zero_point, zp_lim, tilt, tilt_lim


def _nanmedian_axis0(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN (silently) where a column has none.

    One sort of the columns (NaN sort last) and the middle of each column's
    values, as ``np.nanmedian`` gives (which, for a few rows, goes through
    masked arrays and is ~50× slower).
    """
    a = np.asarray(a, dtype=float)
    out = np.full(a.shape[1:], np.nan)
    has = np.isfinite(a).any(axis=0)
    if not has.any() or a.shape[0] == 0:
        return out
    ordered = np.sort(a, axis=0)
    n = np.count_nonzero(~np.isnan(a), axis=0)
    lower = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    upper = np.take_along_axis(ordered, (n // 2)[None], axis=0)[0]
    with np.errstate(invalid="ignore"):
        middle = np.where(n % 2 == 1, lower, (lower + upper) / 2.0)
    out[has] = middle[has]
    return out


def _excess_scatter(resid, relvar, keep, width, *, robust: bool):
    """τ²(λ): the scatter of the kept stars beyond their own noise, smoothed over λ.

    ``robust``: ``(1.4826 · median_s |r_s|)² − median_s v_s`` (``r_s`` relative
    to the stars' median), which one star far off does not inflate — for
    deciding what to clip.  Otherwise the mean of ``r_s² − v_s`` over the kept
    stars with the n/(n−1) correction — unbiased once the outliers are gone,
    for the weights and the variance.  Each term is averaged over ``width``
    pixels; the result is floored at zero.
    """
    n = keep.sum(axis=0)
    several = n >= 2
    if robust:
        spread = MAD_TO_SIGMA * _nanmedian_axis0(np.where(keep, np.abs(resid), np.nan))
        noise = _nanmedian_axis0(np.where(keep, relvar, np.nan))
        tau2 = nan_running_mean(spread**2, several, width) - nan_running_mean(noise, several, width)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = np.where(keep, resid**2 - relvar, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
        tau2 = nan_running_mean(excess, several, width)
    return np.where(np.isfinite(tau2), np.maximum(tau2, 0.0), 0.0)


def _clip_loop(cal, relvar, usable, *, sigma, iterations, width):
    """Iterative clip about the median; returns the kept mask and τ²."""
    keep = usable.copy()
    tau2 = np.zeros(cal.shape[1])
    n_star = cal.shape[0]
    for _ in range(iterations):
        centre = _nanmedian_axis0(np.where(keep, cal, np.nan))
        with np.errstate(invalid="ignore", divide="ignore"):
            resid = cal / centre - 1.0
        tau2 = _excess_scatter(resid, relvar, keep, width, robust=True) if n_star > 1 else tau2
        with np.errstate(invalid="ignore"):
            pull = np.abs(resid) / np.sqrt(relvar + tau2)
        new = usable & (pull <= sigma)
        # never clip every star at a pixel: the one nearest the median stays
        lost = usable.any(axis=0) & ~new.any(axis=0)
        if lost.any():
            nearest = np.nanargmin(
                np.where(usable[:, lost], np.abs(resid[:, lost]), np.inf), axis=0
            )
            new[nearest, np.flatnonzero(lost)] = True
        if np.array_equal(new, keep):
            break
        keep = new
    return keep, tau2


def _levels(cal: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """ln of each star's overall level against the pixel-by-pixel median of the stars.

    The median over λ of ``ln(Cal_s / median_s Cal)``, less the median of
    those; 0 for a star with fewer than 50 usable pixels.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = _nanmedian_axis0(np.where(usable, cal, np.nan))
        ratio = np.log(cal / ref[None, :])
    ok = usable & np.isfinite(ratio)
    level = np.array(
        [
            np.median(r[m]) if np.count_nonzero(m) >= _MIN_OVERLAP else np.nan
            for r, m in zip(ratio, ok, strict=True)
        ]
    )
    if np.isfinite(level).any():
        level = level - np.nanmedian(level)
    return np.where(np.isfinite(level), level, 0.0)


def combine_kernel(
    cal: np.ndarray,
    usable: np.ndarray,
    noise_relvar: np.ndarray,
    scale_relvar: np.ndarray,
    *,
    sigma: float,
    iterations: int,
    min_stars: int,
    max_clipped: float,
    width: int,
) -> tuple[np.ndarray, ...]:
    """Robust mean of the per-star calibrations (see :func:`kspec_xr.combine_calibrations`).

    Each star is first divided by its overall level against the others
    (:func:`_levels`), so that the clip at each pixel judges the stars'
    shapes: their levels differ by the photometric errors and the fibre
    losses, which the gating has judged already.  The combination sits at the
    median level, whose uncertainty is added back as one term.

    Parameters
    ----------
    cal : (S, P) per-star calibrations
    usable : (S, P) bool, valid values of contributing stars
    noise_relvar : (S, P) smoothed fractional variance of each star's counts
        (``Var(C)/C²`` averaged over neighbouring pixels: weights that do not
        follow the noise of the pixel itself)
    scale_relvar : (S,) fractional variance of each star's photometric scale

    Returns
    -------
    mean, noise_relvar, scatter_relvar, rms, nstars, keep, dropped, clipped_fraction, tau2
        ``mean`` (P) where at least ``min_stars`` stars are kept (NaN
        elsewhere); its fractional variance in two parts: from the stars'
        noise (independent from pixel to pixel) and from the scatter between
        them (their shapes, τ², and their levels: smooth in λ); the fractional
        RMS of the kept stars' shapes about it, the number kept (P), the (S, P) kept
        mask, the (S,) stars dropped for being clipped at more than
        ``max_clipped`` of their pixels, each star's clipped fraction and the
        excess star-to-star variance of the shapes τ² (P).
    """
    n_star, n_pix = cal.shape
    rel = np.where(np.isfinite(noise_relvar) & (noise_relvar > 0), noise_relvar, np.inf)
    usable = usable & np.isfinite(cal) & (cal > 0) & np.isfinite(rel)
    level = _levels(cal, usable)
    shape = cal * np.exp(-level)[:, None]
    dropped = np.zeros(n_star, dtype=bool)
    clipped = np.full(n_star, np.nan)
    for _ in range(2):  # once more without a star clipped nearly everywhere
        live = usable & ~dropped[:, None]
        keep, tau2 = _clip_loop(shape, rel, live, sigma=sigma, iterations=iterations, width=width)
        n_usable = live.sum(axis=1)
        fraction = 1.0 - keep.sum(axis=1) / np.maximum(n_usable, 1)
        clipped = np.where(n_usable > 0, fraction, clipped)
        worse = (n_usable > 0) & (fraction > max_clipped)
        if not worse.any() or np.count_nonzero((n_usable > 0) & ~worse) == 0:
            break
        dropped |= worse
    contributing = ~dropped & (usable.sum(axis=1) > 0)
    n_live = int(np.count_nonzero(contributing))
    if n_star > 1:  # the scatter of the stars that were kept, without the clip's robustness
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = (np.where(keep, shape, 0.0)).sum(axis=0) / keep.sum(axis=0)
            resid = shape / centre - 1.0
        tau2 = _excess_scatter(resid, rel, keep, width, robust=False)
    need = max(1, min(int(min_stars), n_live))
    # the level: the median of the stars' levels, known to the larger of the scale
    # errors' formal variance and the stars' scatter (π/2 σ²/N: a median)
    scale_rv = np.asarray(scale_relvar, dtype=float)[contributing]
    with np.errstate(divide="ignore"):
        formal = 1.0 / np.sum(1.0 / np.maximum(scale_rv, 1e-12)) if n_live else np.nan
    spread = robust_sigma(level[contributing]) if n_live >= 2 else 0.0
    level_relvar = max(formal, 0.5 * np.pi * spread**2 / max(n_live, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(keep, 1.0 / (rel + tau2[None, :]), 0.0)
        wsum = w.sum(axis=0)
        mean = (w * np.where(keep, shape, 0.0)).sum(axis=0) / wsum
        # random-effects variance of the weighted mean, Σ w² (v_s + τ²) / (Σw)² = 1/Σw:
        # the stars' own noise (independent from pixel to pixel) plus the scatter
        # between them (smooth in λ), kept apart for smoothing
        noise_relvar = (w**2 * np.where(keep, rel, 0.0)).sum(axis=0) / wsum**2
        scatter_relvar = (w**2).sum(axis=0) * tau2 / wsum**2 + level_relvar
        nstars = keep.sum(axis=0)
        resid = np.where(keep, shape / mean - 1.0, 0.0)
        rms = np.where(
            nstars > 1, np.sqrt((resid**2).sum(axis=0) / np.maximum(nstars - 1, 1)), np.nan
        )
    good = (nstars >= need) & (wsum > 0)
    mean = np.where(good, mean, np.nan)
    noise_relvar = np.where(good, noise_relvar, np.nan)
    scatter_relvar = np.where(good, scatter_relvar, np.nan)
    return mean, noise_relvar, scatter_relvar, rms, nstars, keep, dropped, clipped, tau2


def close_short_runs(mask: np.ndarray, wavelength: np.ndarray, min_width: float) -> np.ndarray:
    """``mask`` with every unmasked run narrower than ``min_width`` Å between two masked ones set.

    A stretch of a few clean pixels between two masked bands (between the
    high Balmer lines, say) holds too little to anchor the calibration: its
    values are the lines' wings, not the continuum.
    """
    out = mask.copy()
    lam = np.asarray(wavelength, dtype=float)
    for a, b in _spans(~mask):
        if a > 0 and b < mask.size - 1 and lam[b] - lam[a] < min_width:
            out[a : b + 1] = True
    return out


def _knots(x: np.ndarray, spacing: float, gap_edges: list[tuple[float, float]]) -> np.ndarray:
    """Interior knots every ``spacing`` Å, none in a gap, ≥ 4 data points between two knots."""
    candidates = np.arange(x[0] + spacing, x[-1] - 0.5 * spacing, spacing)
    for lo, hi in gap_edges:
        candidates = candidates[
            (candidates < lo - 0.5 * spacing) | (candidates > hi + 0.5 * spacing)
        ]
    knots: list[float] = []
    last = x[0]
    for t in candidates:
        if np.count_nonzero((x > last) & (x < t)) >= 4:
            knots.append(float(t))
            last = t
    while knots and np.count_nonzero(x > knots[-1]) < 4:
        knots.pop()
    return np.asarray(knots)


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _coarse_anchors(wave, todo, anchor_values, anchor_relvar, spacing):
    """Coarse anchors inside the wide gaps and those at an end of the data: chunk medians.

    A gap at the end of the spectrum has clean pixels on one side only, and
    one polynomial piece across a gap of a few hundred Å (the merged high
    Balmer lines) cannot follow a throughput that curves there; the
    combination that kept the line bands (``anchor_values``) still knows the
    level once its line residuals are averaged away: the median of every
    ``spacing``-Å chunk with at least 5 values is one point.  Gaps narrower
    than ``2·spacing`` (one line) are bridged from their sides alone.
    """
    xs, ys, vs = [], [], []
    runs = _spans(todo)
    for a, b in runs:
        at_end = a == 0 or b == todo.size - 1
        if not at_end and wave[b] - wave[a] < 2 * spacing:
            continue
        for lo in np.arange(wave[a], wave[b] + 1e-9, spacing):
            sel = np.zeros(todo.size, dtype=bool)
            sel[a : b + 1] = True
            sel &= (wave >= lo) & (wave < lo + spacing)
            with np.errstate(invalid="ignore", divide="ignore"):
                sel &= np.isfinite(anchor_values) & (anchor_values > 0) & np.isfinite(anchor_relvar)
            n = np.count_nonzero(sel)
            if n < 5:
                continue
            logs = np.log(anchor_values[sel])
            xs.append(float(np.median(wave[sel])))
            ys.append(float(np.median(logs)))
            # the median's variance, from the scatter in the chunk (line residuals included)
            spread = max(robust_sigma(logs) ** 2, float(np.median(anchor_relvar[sel])))
            vs.append(1.5708 * spread / n)
    return np.asarray(xs), np.asarray(ys), np.asarray(vs)


def bridge_gaps(
    wavelength: np.ndarray,
    values: np.ndarray,
    relvar: np.ndarray,
    gap: np.ndarray,
    *,
    anchor_values: np.ndarray | None = None,
    anchor_relvar: np.ndarray | None = None,
    knot_spacing: float = 40.0,
    clip: float = 4.0,
    iterations: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the gaps of a positive curve from a robust B-spline fit to the rest.

    A cubic least-squares B-spline of ``ln(values)`` (weights ``1/relvar``,
    pixels beyond ``clip`` robust σ dropped and the fit repeated), with
    interior knots every ``knot_spacing`` Å except inside and right next to a
    gap, so that each gap is spanned by one polynomial piece fixed by the
    clean pixels on both sides: no single pixel at a gap's edge can make a
    feature.  A gap at an end of the spectrum, or wider than two knots, is
    anchored by the medians of ``anchor_values`` over ``knot_spacing``-Å
    chunks (see :func:`_coarse_anchors`);
    where no value is left at all the curve continues as a straight line in
    ``ln`` with the end slope for at most ``knot_spacing`` Å, then flat, its
    fractional variance grown by a quarter of the squared extrapolated change.

    Returns the filled values and fractional variances (inside a gap, the
    median fractional variance of the ten valid pixels on either side).
    """
    from scipy.interpolate import make_lsq_spline

    values = np.asarray(values, dtype=float).copy()
    relvar = np.asarray(relvar, dtype=float).copy()
    wave = np.asarray(wavelength, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = ~gap & np.isfinite(values) & (values > 0) & np.isfinite(relvar) & (relvar > 0)
    todo = ~ok
    if not todo.any():
        return values, relvar
    if np.count_nonzero(ok) < 8:
        if np.count_nonzero(ok) >= 1:
            values[todo] = np.interp(wave[todo], wave[ok], values[ok])
            relvar[todo] = np.interp(wave[todo], wave[ok], relvar[ok])
        return values, relvar
    x, y, var = wave[ok], np.log(values[ok]), relvar[ok]
    runs = [(wave[a], wave[b]) for a, b in _spans(todo)]
    if anchor_values is not None:
        ax, ay, av = _coarse_anchors(wave, todo, anchor_values, anchor_relvar, knot_spacing)
        order = np.argsort(np.r_[x, ax], kind="stable")
        x, y, var = np.r_[x, ax][order], np.r_[y, ay][order], np.r_[var, av][order]
    sd = np.sqrt(var)
    t_inner = _knots(x, knot_spacing, runs)
    t = np.r_[[x[0]] * 4, t_inner, [x[-1]] * 4]
    fit_ok = np.ones(x.size, dtype=bool)
    spline = None
    for _ in range(iterations):
        try:
            spline = make_lsq_spline(x[fit_ok], y[fit_ok], t, k=3, w=1.0 / sd[fit_ok])
        except (ValueError, np.linalg.LinAlgError):
            break
        resid = (y - spline(x)) / sd
        scale = max(robust_sigma(resid[fit_ok]), 1.0)
        new = np.abs(resid) <= clip * scale
        if np.array_equal(new, fit_ok) or np.count_nonzero(new) < 8:
            break
        fit_ok = new
    inside = np.clip(wave[todo], x[0], x[-1])
    if spline is None:
        log_fill = np.interp(inside, x, y)
        slope = np.zeros(2)
    else:
        log_fill = spline(inside)
        slope = spline.derivative()(np.array([x[0], x[-1]]))
    beyond = np.clip(wave[todo] - inside, -knot_spacing, knot_spacing)
    step = np.where(beyond < 0, slope[0], slope[1]) * beyond
    values[todo] = np.exp(log_fill + step)
    for a, b in _spans(todo):  # in a gap: the variance of the pixels on its two sides
        lo = relvar[max(a - 10, 0) : a][ok[max(a - 10, 0) : a]]
        hi = relvar[b + 1 : b + 11][ok[b + 1 : b + 11]]
        near = np.concatenate([lo, hi])
        relvar[a : b + 1] = np.median(near) if near.size else np.nanmedian(relvar[ok])
    if anchor_values is not None and anchor_relvar is not None:  # as uncertain as its anchors
        with np.errstate(invalid="ignore"):
            worse = todo & np.isfinite(anchor_relvar) & (anchor_relvar > relvar)
        relvar[worse] = anchor_relvar[worse]
    relvar[todo] += (0.5 * step) ** 2
    return values, relvar


def savgol_with_variance(values, variance, *, window: int, order: int):
    """Savitzky–Golay smoothing and the variance of the smoothed values.

    The filter is linear, ``y_i = Σ_k c_k x_{i+k}``, so for independent pixels
    ``Var(y_i) = Σ_k c_k² Var(x_{i+k})`` (interior coefficients, the variance
    extended flat beyond the ends: a close approximation there).
    """
    from scipy.signal import (  # deferred: scipy.signal is slow to import
        savgol_coeffs,
        savgol_filter,
    )

    window = min(window, values.shape[-1] - (1 - values.shape[-1] % 2))
    smoothed = savgol_filter(values, window, order, mode="interp", axis=-1)
    coeffs = savgol_coeffs(window, order)
    half = window // 2
    var = np.convolve(np.pad(np.nan_to_num(variance), half, mode="edge"), coeffs**2, mode="valid")
    return smoothed, np.where(np.isfinite(variance), var, np.nan)


def combine_block(
    cal,
    var,
    usable,
    scale_relvar,
    line_band,
    telluric,
    wave,
    *,
    options,
    knot_spacing,
    min_anchor,
    smooth,
):
    """The whole combination of :func:`kspec_xr.combine_calibrations` (stars on axis 0).

    Line bands (with the short clean stretches between them) and few-star
    pixels become gaps, :func:`combine_kernel` combines the rest, a second
    pass that keeps the line bands gives coarse anchors, optional
    Savitzky–Golay smoothing (``smooth = (window, order)``) shrinks the noise
    part of the variance, and :func:`bridge_gaps` fills the gaps.  Returns
    calibration, variance, rms, nstars, keep, dropped, clipped, scatter (τ),
    gap, few and line_band.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = var / cal**2 - scale_relvar[:, None]
    noise = nan_running_mean(noise, usable, options["width"])
    masked = close_short_runs(line_band | telluric, wave, min_anchor)
    line_band = line_band | (masked & ~telluric)
    clean = usable & ~line_band[None, :]
    mean, noise_rv, scatter_rv, rms, nstars, keep, dropped, clipped, tau2 = combine_kernel(
        cal, clean, noise, scale_relvar, **options
    )
    gap = ~np.isfinite(mean)
    few = gap & clean.any(axis=0)
    # the same stars with the line bands kept: coarse anchors where a gap reaches an end
    anchor, anchor_noise, anchor_scatter, *_ = combine_kernel(
        cal, usable & ~dropped[:, None], noise, scale_relvar, **options
    )
    if smooth is not None:
        # smoothing averages the noise of neighbouring pixels, not the scatter between
        # stars (smooth in λ already): only the noise part of the variance shrinks
        window, order = smooth
        filled, _ = bridge_gaps(wave, mean, noise_rv + scatter_rv, gap, knot_spacing=knot_spacing)
        mean, smooth_var = savgol_with_variance(
            filled, filled**2 * np.where(gap, np.nan, noise_rv), window=window, order=order
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            noise_rv = smooth_var / mean**2
        mean = np.where(gap, np.nan, mean)
    filled, filled_relvar = bridge_gaps(
        wave,
        mean,
        noise_rv + scatter_rv,
        gap,
        anchor_values=anchor,
        anchor_relvar=anchor_noise + anchor_scatter,
        knot_spacing=knot_spacing,
    )
    variance = filled**2 * filled_relvar
    scatter = np.sqrt(tau2)
    return filled, variance, rms, nstars, keep, dropped, clipped, scatter, gap, few, line_band
