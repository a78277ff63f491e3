"""The instrument's line-spread FWHM measured from a star and its model (NumPy only).

A standard star's model is built at a resolution *sharper* than the
instrument's (FWHM ``f0``); blurring it further by a Gaussian of FWHM
``sqrt(f² − f0²)`` gives the model at FWHM ``f`` (Gaussians add in
quadrature).  :func:`fwhm_profile` scores a set of trial FWHMs the way the
template fit scores templates — star and model each divided by their own
running mean (the throughput drops out), χ² over the unmasked pixels with a
1 % model error — in the whole spectrum and in a few wavelength segments;
:func:`profile_minimum` takes the minimum (a parabola through the best trial
and its neighbours) and its 1σ error from the curvature, scaled by the
reduced χ².

The blur is done in Fourier space on the pixel grid (exact for a sampled,
band-limited spectrum even when the added width is below a pixel), with the
spectrum mirrored at both ends so that no edge rings.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from .resample import SIGMA_PER_FWHM, running_mean, smoothing_pixels

__all__ = [
    "gaussian_blur",
    "fwhm_profile",
    "profile_minimum",
    "trial_fwhms",
    "combine_fwhm",
    "FwhmEstimate",
    "sky_line_fwhm",
    "MAX_SCATTER",
    "MIN_MEASURES",
    "round_fwhm",
]


def trial_fwhms(fwhm0: float, step: float, n: int = 48) -> np.ndarray:
    """Trial FWHMs (Å), log-spaced from just above ``fwhm0`` to max(15 Å, 10 pixels)."""
    hi = max(15.0, 10.0 * step, 3.0 * fwhm0)
    return np.geomspace(1.02 * fwhm0, hi, n)


def gaussian_blur(values: np.ndarray, sigma_pix: np.ndarray) -> np.ndarray:
    """``values`` (P,) blurred by Gaussians of σ ``sigma_pix`` (K,) pixels → (K, P)."""
    n = values.size
    pad = int(min(n - 1, np.ceil(5.0 * float(np.max(sigma_pix, initial=0.0))) + 1))
    mirrored = np.concatenate([values[pad:0:-1], values, values[-2 : -pad - 2 : -1]])
    freq = np.fft.rfftfreq(mirrored.size)
    transfer = np.exp(-2.0 * (np.pi * freq[None, :] * np.asarray(sigma_pix)[:, None]) ** 2)
    blurred = np.fft.irfft(np.fft.rfft(mirrored)[None, :] * transfer, n=mirrored.size, axis=1)
    return blurred[:, pad : pad + n]


def fwhm_profile(
    wave: np.ndarray,
    flux: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    model: np.ndarray,
    fwhm0: float,
    trials: np.ndarray,
    edges: np.ndarray,
    *,
    model_error: float = 0.01,
    smooth_scale: float = 150.0,
    scale_lines: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """χ² of the star against its model blurred to each trial FWHM.

    Parameters
    ----------
    wave : (P,) pixel wavelengths (Å; a near-linear grid)
    flux, variance, good : (P,) the star's counts, their variance, pixels to use
    model : (P,) the star's model at FWHM ``fwhm0`` on the same pixels
    fwhm0 : float, the model's FWHM (Å)
    trials : (K,) trial FWHMs, each > ``fwhm0``
    edges : (S + 1,) wavelength edges of the segments to score separately
    scale_lines : bool, let the strength of the model's line pattern (its
        departure from 1) float freely per segment, so that only the lines'
        shapes measure the width, not their depths (which no grid gets right)

    Returns
    -------
    chi2 : (S + 1, K) χ² over the whole spectrum (row 0) and per segment
    n_pixels : (S + 1,) pixels that count in each
    """
    n_seg = edges.size - 1
    out = np.full((n_seg + 1, trials.size), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(good & (variance > 0) & np.isfinite(flux), 1.0 / variance, 0.0)
    ivar = np.where(np.isfinite(model), ivar, 0.0)
    gpix = (ivar > 0).astype(float)
    counts = np.zeros(n_seg + 1, dtype=int)
    if gpix.sum() < 50:
        return out, counts
    step = float(np.median(np.diff(wave)))
    sigma = np.sqrt(np.maximum(trials**2 - fwhm0**2, 0.0)) / SIGMA_PER_FWHM / step
    blurred = gaussian_blur(np.where(np.isfinite(model), model, 0.0), sigma)  # (K, P)
    width = smoothing_pixels(wave, smooth_scale)
    star = np.where(gpix > 0, flux, 0.0)
    star_smooth = running_mean(star, gpix, width)
    model_norm = blurred.T / running_mean(blurred.T, gpix, width)  # (P, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        star_norm = np.where(star_smooth > 0, star / star_smooth, 0.0)
        var_norm = np.where(ivar > 0, 1.0 / (ivar * star_smooth**2), np.inf)
        w = np.where((star_smooth > 0) & (gpix > 0), 1.0 / (var_norm + model_error**2), 0.0)
    pieces = [np.ones(wave.size, dtype=bool)]
    pieces += [(wave >= lo) & (wave < hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    star_lines = star_norm - 1.0
    model_lines = model_norm - 1.0  # (P, K)
    for k, inside in enumerate(pieces):
        use = inside & (w > 0)
        counts[k] = int(use.sum())
        if counts[k] < 50:
            continue
        ws, s_l, m_l = w[use], star_lines[use], model_lines[use]
        if scale_lines:
            # the line pattern's strength is free (its depth trades off against the
            # width: blurring an unresolved line makes it shallower), its shape is not
            num = (ws * s_l) @ m_l
            den = ws @ (m_l * m_l)
            amp = np.where(den > 0, np.clip(num / np.where(den > 0, den, 1.0), 0.0, None), 1.0)
        else:
            amp = np.ones(trials.size)
        out[k] = ws @ (s_l[:, None] - amp[None, :] * m_l) ** 2
    return out, counts


def profile_minimum(trials: np.ndarray, chi2: np.ndarray, dof: int) -> tuple[float, float]:
    """FWHM at the χ² minimum and its 1σ error (NaN, NaN when at the trials' edge).

    A parabola in ln FWHM through the best trial and its two neighbours; the
    error from Δχ² = 1 around it, scaled by the reduced χ² of the best fit
    when that exceeds 1 (the model never matches a real star exactly).
    """
    if not np.all(np.isfinite(chi2)) or dof <= 0:
        return np.nan, np.nan
    k = int(np.argmin(chi2))
    if k == 0 or k == trials.size - 1:
        return np.nan, np.nan
    x = np.log(trials[k - 1 : k + 2])
    a, b, c = np.polyfit(x - x[1], chi2[k - 1 : k + 2], 2)
    if a <= 0:
        return np.nan, np.nan
    x_min = x[1] - b / (2.0 * a)
    chi2_min = c - b * b / (4.0 * a)
    inflate = max(1.0, chi2_min / dof)
    err_log = np.sqrt(inflate / a)
    fwhm = float(np.exp(x_min))
    return fwhm, fwhm * float(err_log)


#: the stars' FWHMs must agree to this robust fractional scatter for a measurement to count
MAX_SCATTER = 0.13
#: fewest stars (or sky lines) a measurement rests on
MIN_MEASURES = 3


class FwhmEstimate(NamedTuple):
    """Several measurements of the FWHM combined (see :func:`combine_fwhm`)."""

    fwhm: float  # median, Å (NaN without any)
    err: float  # its 1σ
    n: int  # measurements that count
    scatter: float  # robust σ / median (NaN with fewer than 3)
    reliable: bool  # n >= MIN_MEASURES and scatter <= MAX_SCATTER


def combine_fwhm(values: np.ndarray, errors: np.ndarray) -> FwhmEstimate:
    """Median of several FWHMs (stars or sky lines), its error and whether they agree.

    The error is 1.25 · robust σ / √n (the stars' own errors with < 3).  The
    measurement is *reliable* when at least :data:`MIN_MEASURES` agree to a
    robust scatter of :data:`MAX_SCATTER`: on simulations the stars agree to
    2–10 %; on real frames with templates that do not match the stars' lines
    they scatter by 16–50 %, and their median is then wrong by 2×.
    """
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    if not ok.any():
        return FwhmEstimate(np.nan, np.nan, 0, np.nan, False)
    v = values[ok]
    centre = float(np.median(v))
    scatter = np.nan
    if v.size >= 3:
        sigma = 1.4826 * float(np.median(np.abs(v - centre)))
        err = 1.2533 * sigma / np.sqrt(v.size)
        scatter = sigma / centre
    else:
        err = float(np.sqrt(np.nansum(np.asarray(errors, dtype=float)[ok] ** 2))) / v.size
    reliable = bool(v.size >= MIN_MEASURES and scatter <= MAX_SCATTER)
    return FwhmEstimate(centre, float(err), int(v.size), float(scatter), reliable)


def sky_line_fwhm(
    wave: np.ndarray, sky: np.ndarray, *, guess: float, max_lines: int = 30
) -> np.ndarray:
    """FWHMs (Å) of the strong isolated emission lines of a sky spectrum.

    Lines are peaks more than 20 robust σ (and a fifth of the continuum)
    above a running median (width 15 guesses) with no other such peak within 3 guesses; each is fitted with a
    pixel-integrated Gaussian on a constant (``scipy.optimize.curve_fit``)
    over ±2 guesses.  Template-free: the sky's lines are unresolved, so their
    width is the instrument's.  Returns the FWHM of every line that fitted
    (NaN-free, at most ``max_lines``, the brightest first).
    """
    from scipy.ndimage import median_filter
    from scipy.optimize import OptimizeWarning, curve_fit
    from scipy.special import erf

    wave = np.asarray(wave, dtype=float)
    sky = np.asarray(sky, dtype=float)
    good = np.isfinite(sky)
    if good.sum() < 50 or not guess > 0:
        return np.empty(0)
    step = float(np.median(np.diff(wave)))
    g_pix = guess / step
    base = median_filter(np.where(good, sky, np.nanmedian(sky)), size=max(5, int(15 * g_pix) | 1))
    excess = np.where(good, sky - base, 0.0)
    noise = 1.4826 * np.median(np.abs(excess[good] - np.median(excess[good])))
    # 20 robust σ, and a fifth of the continuum (a noiseless model sky has σ ~ 0)
    threshold = max(20.0 * noise, 0.2 * abs(float(np.median(base[good]))))
    if not threshold > 0:
        return np.empty(0)
    peak = (excess > threshold) & (excess >= np.roll(excess, 1)) & (excess >= np.roll(excess, -1))
    peaks = np.flatnonzero(peak[1:-1]) + 1
    peaks = peaks[np.argsort(excess[peaks])[::-1]]
    half = max(3, int(np.ceil(2 * g_pix)))
    isolation = 3 * g_pix
    out: list[float] = []
    for p in peaks:
        if len(out) >= max_lines:
            break
        others = peaks[(peaks != p) & (np.abs(peaks - p) < isolation)]
        if others.size or p - half < 0 or p + half >= sky.size:
            continue
        x = wave[p - half : p + half + 1]
        y = sky[p - half : p + half + 1]
        if not np.all(np.isfinite(y)):
            continue

        def model(lam, area, centre, sigma, level):
            lo, hi = lam - step / 2, lam + step / 2
            z = np.sqrt(2.0) * sigma
            return level + area / (2 * step) * (erf((hi - centre) / z) - erf((lo - centre) / z))

        start = (float(excess[p]) * guess, float(wave[p]), guess / SIGMA_PER_FWHM, float(base[p]))
        try:
            with warnings.catch_warnings():  # a degenerate line: its covariance is not needed
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(model, x, y, p0=start, maxfev=2000)
        except (RuntimeError, ValueError):
            continue
        fwhm = abs(params[2]) * SIGMA_PER_FWHM
        if 0.2 * guess < fwhm < 5 * guess and abs(params[1] - wave[p]) < 2 * step:
            out.append(fwhm)
    return np.asarray(out)


def round_fwhm(fwhm: float, step: float = 0.02) -> float:
    """``fwhm`` rounded to a geometric grid of ``step`` (2 %): exposures of one setup
    whose measurements agree within the error share one prepared template grid."""
    k = np.round(np.log(fwhm) / np.log1p(step))
    return float(np.round(np.exp(k * np.log1p(step)), 4))
