"""Radial velocities by cross-correlation on a grid uniform in ln λ (NumPy only).

On such a grid a Doppler shift ``λ_obs = λ_rest·(1 + v/c)`` is a constant
shift of ``ln(1 + v/c)/Δ`` pixels, so one FFT cross-correlates a spectrum
with every template at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["xcorr_velocity", "parabola_peak", "C_KMS"]

C_KMS = 299_792.458


def parabola_peak(y_minus: np.ndarray, y0: np.ndarray, y_plus: np.ndarray) -> np.ndarray:
    """Offset (in samples, within ±0.5… ±1) of the vertex of the parabola through 3 points."""
    denom = y_minus - 2.0 * y0 + y_plus
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = 0.5 * (y_minus - y_plus) / denom
    return np.clip(np.where(np.isfinite(offset), offset, 0.0), -1.0, 1.0)


def xcorr_velocity(
    spectrum: np.ndarray,
    weight: np.ndarray,
    templates: np.ndarray,
    dlnl: float,
    *,
    vmax: float = 500.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Velocity of ``spectrum`` relative to each template, by weighted FFT cross-correlation.

    Parameters
    ----------
    spectrum : (L,) array
        Continuum-normalised observed spectrum minus one (line depths), on
        the ln λ grid of step ``dlnl``.
    weight : (L,) array
        0 at masked pixels, 1 (or a taper) elsewhere.
    templates : (T, L) array
        Continuum-normalised templates minus one on the same grid.
    dlnl : float
        Grid step in ln λ.
    vmax : float
        Search range ±vmax km/s.

    Returns
    -------
    velocity : (T,) array
        km/s, positive = redshift, with a sub-pixel parabolic peak.
    peak : (T,) array
        Normalised cross-correlation at the peak (≈ 1 for a perfect match).

    Notes
    -----
    ``ccf(k) = Σ_i w_i s_i t_{i−k}``; the observed spectrum is the template
    shifted by ``+k`` pixels when ``k`` maximises it, so
    ``v = c·(exp(k·Δ) − 1)``.
    """
    s = np.asarray(spectrum, dtype=float) * weight
    t = np.asarray(templates, dtype=float)
    n = s.size
    kmax = int(np.ceil(np.log1p(vmax / C_KMS) / dlnl)) + 1
    nfft = 1 << int(np.ceil(np.log2(n + kmax + 1)))
    fs = np.fft.rfft(s, nfft)
    ft = np.fft.rfft(t * (weight > 0), nfft, axis=-1)
    ccf = np.fft.irfft(fs[None, :] * np.conj(ft), nfft, axis=-1)
    lags = np.arange(-kmax, kmax + 1)
    window = ccf[:, lags % nfft]
    norm = np.sqrt(np.sum(s * s) * np.sum((t * (weight > 0)) ** 2, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        window = window / norm[:, None]
    best = np.argmax(window[:, 1:-1], axis=1) + 1
    rows = np.arange(t.shape[0])
    offset = parabola_peak(window[rows, best - 1], window[rows, best], window[rows, best + 1])
    shift = lags[best] + offset
    return C_KMS * np.expm1(shift * dlnl), window[rows, best]
