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

import numpy as np

from .resample import SIGMA_PER_FWHM, running_mean, smoothing_pixels

__all__ = [
    "gaussian_blur",
    "fwhm_profile",
    "profile_minimum",
    "trial_fwhms",
    "combine_fwhm",
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
    resid2 = w[:, None] * (star_norm[:, None] - model_norm) ** 2  # (P, K)
    pieces = [np.ones(wave.size, dtype=bool)]
    pieces += [(wave >= lo) & (wave < hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    for k, inside in enumerate(pieces):
        use = inside & (w > 0)
        counts[k] = int(use.sum())
        if counts[k] >= 50:
            out[k] = resid2[use].sum(axis=0)
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


def combine_fwhm(values: np.ndarray, errors: np.ndarray) -> tuple[float, float, int]:
    """Median of the stars' FWHMs, its error (robust σ / √n · 1.25; the stars' own with < 3), n."""
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    if not ok.any():
        return np.nan, np.nan, 0
    v = values[ok]
    centre = float(np.median(v))
    if v.size >= 3:
        err = 1.2533 * 1.4826 * float(np.median(np.abs(v - centre))) / np.sqrt(v.size)
    else:
        err = float(np.sqrt(np.nansum(np.asarray(errors, dtype=float)[ok] ** 2))) / v.size
    return centre, err, int(v.size)


def round_fwhm(fwhm: float, step: float = 0.02) -> float:
    """``fwhm`` rounded to a geometric grid of ``step`` (2 %): exposures of one setup
    whose measurements agree within the error share one prepared template grid."""
    k = np.round(np.log(fwhm) / np.log1p(step))
    return float(np.round(np.exp(k * np.log1p(step)), 4))
