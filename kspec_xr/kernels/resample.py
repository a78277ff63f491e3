"""Flux-conserving resampling with Gaussian smoothing, as one sparse linear operator.

NumPy/SciPy only (no xarray).  A spectrum sampled on bins ``src_edges`` (a
piecewise-constant flux density) is convolved with a Gaussian of width
``sigma`` (Å, may vary with wavelength) and averaged over the bins
``dst_edges``.  The operator ``W`` (n_dst × n_src) is built once and applied
to any number of spectra at once: ``dst = src @ W.T``.

Notes
-----
For a source bin ``[c, d]`` and a destination bin ``[a, b]`` of width
``Δ = b − a`` the weight is the exact double integral

    w = (1/Δ) ∫_a^b dλ ∫_c^d dμ  G_σ(λ − μ)
      = (1/Δ) [Ψ(b − c) − Ψ(b − d) − Ψ(a − c) + Ψ(a − d)],

with ``Ψ(x) = σ·[z·Φ(z) + φ(z)]``, ``z = x/σ`` (Φ, φ the standard normal CDF
and PDF).  As σ → 0, Ψ(x) → max(x, 0) and ``w`` becomes the overlap fraction
of plain flux-conserving rebinning.  Rows are renormalised to sum to one, so
a flat spectrum stays exactly flat and the flux density is conserved.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.special import ndtr

__all__ = [
    "edges_from_centers",
    "resample_matrix",
    "cumulative",
    "rebin_cumulative",
    "rebin_plan",
    "rebin_apply",
    "RebinPlan",
    "RebinBuffers",
    "SIGMA_PER_FWHM",
    "running_mean",
    "smoothing_pixels",
]

#: FWHM / σ of a Gaussian, 2·sqrt(2·ln 2)
SIGMA_PER_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def edges_from_centers(centers: np.ndarray) -> np.ndarray:
    """Bin edges half way between centres (extrapolated at both ends).

    On a grid uniform in λ or in ln λ this gives the natural pixel edges
    (geometric mid-points are used when the grid is log-uniform).
    """
    c = np.asarray(centers, dtype=float)
    if c.ndim != 1 or c.size < 2:
        raise ValueError("a wavelength grid needs at least two points along one axis")
    if np.any(np.diff(c) <= 0):
        raise ValueError("a wavelength grid must increase strictly")
    steps = np.diff(np.log(c))
    if np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        mid = np.sqrt(c[1:] * c[:-1])
        first = c[0] ** 2 / mid[0]
        last = c[-1] ** 2 / mid[-1]
    else:
        mid = 0.5 * (c[1:] + c[:-1])
        first = 2 * c[0] - mid[0]
        last = 2 * c[-1] - mid[-1]
    return np.concatenate([[first], mid, [last]])


def _psi(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """∫_{-∞}^{x} Φ(t/σ) dt, continuous as σ → 0 (then max(x, 0))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = x / sigma
        val = sigma * (z * ndtr(z) + _INV_SQRT_2PI * np.exp(-0.5 * z * z))
    return np.where(sigma > 0, val, np.maximum(x, 0.0))


def resample_matrix(
    src_edges: np.ndarray,
    dst_edges: np.ndarray,
    sigma: float | np.ndarray = 0.0,
    *,
    nsigma: float = 5.0,
) -> sparse.csr_matrix:
    """Sparse operator that smooths with a Gaussian and rebins flux densities.

    Parameters
    ----------
    src_edges : (n_src + 1,) array
        Increasing edges of the source bins (Å).
    dst_edges : (n_dst + 1,) array
        Increasing edges of the destination bins (Å).
    sigma : float or (n_dst,) array
        Gaussian σ (Å) at each destination bin; 0 for plain rebinning.
    nsigma : float
        Kernel truncation, in σ, beyond the destination bin.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_dst, n_src)
        Rows sum to one.  ``dst = W @ src`` for one spectrum, ``src @ W.T``
        for a stack of spectra along the last axis.

    Raises
    ------
    ValueError
        If a destination bin (with its kernel) reaches outside the source range.
    """
    src = np.asarray(src_edges, dtype=float)
    dst = np.asarray(dst_edges, dtype=float)
    n_dst = dst.size - 1
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (n_dst,))
    lo = dst[:-1] - nsigma * sig
    hi = dst[1:] + nsigma * sig
    if lo[0] < src[0] or hi[-1] > src[-1]:
        raise ValueError(
            f"the target range {lo[0]:.2f}-{hi[-1]:.2f} Å (with the smoothing kernel) "
            f"is not inside the source range {src[0]:.2f}-{src[-1]:.2f} Å"
        )
    first = np.searchsorted(src, lo, side="right") - 1
    last = np.searchsorted(src, hi, side="left")  # exclusive end of the edges span
    width = int(np.max(last - first))
    cols = first[:, None] + np.arange(width)[None, :]
    valid = cols < np.minimum(last, src.size - 1)[:, None]
    cols = np.where(valid, cols, 0)
    c = src[cols]
    d = src[cols + 1]
    a = dst[:-1, None]
    b = dst[1:, None]
    s = sig[:, None]
    if np.any(sig > 0):
        w = _psi(b - c, s) - _psi(b - d, s) - _psi(a - c, s) + _psi(a - d, s)
    else:  # plain rebinning: the overlap of the two bins
        w = np.minimum(b, d) - np.maximum(a, c)
    w = np.where(valid, np.clip(w, 0.0, None), 0.0)
    w /= w.sum(axis=1, keepdims=True)
    rows = np.broadcast_to(np.arange(n_dst)[:, None], cols.shape)
    keep = w > 0
    return sparse.csr_matrix((w[keep], (rows[keep], cols[keep])), shape=(n_dst, src.size - 1))


def cumulative(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Running integral of piecewise-constant spectra: (..., n) on ``edges`` (n + 1) → (..., n + 1).

    ``out[..., i] = Σ_{k<i} values[..., k]·(edges[k+1] − edges[k])``; with it,
    :func:`rebin_cumulative` rebins any number of spectra onto any bins for
    the cost of two gathers, and a Doppler shift is a rescaling of the bins.
    """
    widths = np.diff(np.asarray(edges, dtype=float))
    out = np.zeros((*values.shape[:-1], values.shape[-1] + 1))
    np.cumsum(values * widths, axis=-1, out=out[..., 1:])
    return out


class RebinPlan(NamedTuple):
    """Where destination edges fall on the source bins (:func:`rebin_plan`)."""

    source_bin: np.ndarray  # (m + 1,) source bin of every destination edge
    frac: np.ndarray  # (m + 1,) its fractional position in that bin
    width: np.ndarray  # (m,) destination bin widths in the source frame


def rebin_plan(edges: np.ndarray, dst_edges: np.ndarray, *, stretch: float = 1.0) -> RebinPlan:
    """The part of :func:`rebin_cumulative` shared by every spectrum on the same bins."""
    x = np.asarray(dst_edges, dtype=float) / stretch
    e = np.asarray(edges, dtype=float)
    j = np.clip(np.searchsorted(e, x, side="right") - 1, 0, e.size - 2)
    frac = (x - e[j]) / (e[j + 1] - e[j])
    return RebinPlan(j, frac, np.diff(x))


class RebinBuffers:
    """Scratch arrays for :func:`rebin_apply` of up to ``n`` rows onto ``m`` bins.

    Reused from call to call: a fresh megabyte-sized array per call costs
    more in page faults than the arithmetic on it.
    """

    def __init__(self, n: int, m: int):
        self.flat = np.empty((n, m + 1), dtype=np.intp)
        self.lo = np.empty((n, m + 1))
        self.hi = np.empty((n, m + 1))
        self.out = np.empty((n, m))


def rebin_apply(
    cum: np.ndarray,
    plan: RebinPlan,
    rows: np.ndarray | None = None,
    *,
    buffers: RebinBuffers | None = None,
) -> np.ndarray:
    """:func:`rebin_cumulative` with a :func:`rebin_plan` made once for many calls.

    With ``buffers`` (and ``rows`` of a C-contiguous 2-D ``cum``) the work and
    the result are in those arrays: the result is a view that the next call
    overwrites.  The numbers are the same either way.
    """
    j, frac, width = plan
    flat_path = rows is not None and cum.ndim == 2 and cum.flags.c_contiguous
    if rows is None:
        lo, hi = cum[..., j], cum[..., j + 1]
    elif flat_path:
        # one flat gather per end (np.ix_ fancy indexing is ~3x slower)
        rows = np.asarray(rows, dtype=np.intp)
        k = rows.size
        if buffers is not None and k > buffers.out.shape[0]:
            buffers = None  # too many rows for them
        flat = np.add(
            rows[:, None] * cum.shape[1], j, out=None if buffers is None else buffers.flat[:k]
        )
        source = cum.ravel()
        lo = source.take(flat, out=None if buffers is None else buffers.lo[:k], mode="clip")
        flat += 1
        hi = source.take(flat, out=None if buffers is None else buffers.hi[:k], mode="clip")
    else:
        lo, hi = cum[np.ix_(rows, j)], cum[np.ix_(rows, j + 1)]
    at = np.subtract(hi, lo, out=hi)  # at = lo + frac·(hi − lo), in place
    at *= frac
    at += lo
    into = buffers.out[: at.shape[0]] if flat_path and buffers is not None else None
    out = np.subtract(at[..., 1:], at[..., :-1], out=into)
    out /= width
    return out


def rebin_cumulative(
    cum: np.ndarray,
    edges: np.ndarray,
    dst_edges: np.ndarray,
    *,
    stretch: float = 1.0,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Mean flux density of each spectrum over each destination bin (plain rebinning).

    Parameters
    ----------
    cum : (..., n + 1) array
        From :func:`cumulative`.
    edges : (n + 1,) array
        The source bin edges.
    dst_edges : (m + 1,) array
        The destination bin edges, inside the source range.
    stretch : float
        The source spectra are stretched in wavelength by this factor
        (``1 + v/c`` for a Doppler shift) before rebinning.
    rows : int array, optional
        Only these spectra of a 2-D ``cum`` (gathered together with the bins).

    Returns
    -------
    (..., m) array
        The same numbers as ``resample_matrix(edges * stretch, dst_edges) @ values``.
    """
    return rebin_apply(cum, rebin_plan(edges, dst_edges, stretch=stretch), rows)


def bin_log_grid(loglam: np.ndarray, factor: int) -> np.ndarray:
    """Centres (ln λ) of a log-uniform grid with every ``factor`` pixels merged into one."""
    n = (loglam.size // factor) * factor
    return loglam[:n].reshape(-1, factor).mean(axis=1)


def bin_pixels(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor`` consecutive pixels along the last axis (float64)."""
    n = (values.shape[-1] // factor) * factor
    return values[..., :n].reshape(*values.shape[:-1], n // factor, factor).mean(-1, dtype=float)


def smoothing_pixels(wave: np.ndarray, scale: float) -> int:
    """Pixels of the running mean (odd, at least 5) that spans ``scale`` Å."""
    step = float(np.median(np.diff(wave)))
    return max(5, int(round(scale / step)) | 1)


def running_mean(
    values: np.ndarray,
    weight: np.ndarray,
    width: int,
    *,
    axis: int = 0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted running mean along ``axis`` (default the first): S(v·g)/S(g), twice a boxcar
    (a triangle).

    Masked pixels (g = 0) do not count; where no valid pixel is near (a gap
    wider than the window) the result is 1, and those pixels carry no weight.
    ``weight`` (n,) is along ``axis``; a stack of spectra is fastest as
    (C, n) with ``axis=-1`` (contiguous lines).  ``out``: a float64 array of
    the shape of ``values`` to write the result into (reused scratch).
    """
    from scipy.ndimage import uniform_filter1d

    values = np.asarray(values)
    axis = axis % max(values.ndim, 1)

    def smooth(a, axis):
        uniform_filter1d(a, width, axis=axis, mode="nearest", output=a)
        return uniform_filter1d(a, width, axis=axis, mode="nearest", output=a)

    g = np.asarray(weight, dtype=float)
    shape = [1] * values.ndim
    shape[axis] = g.size
    num = smooth(np.multiply(values, g.reshape(shape), out=out, dtype=float), axis)
    den = smooth(g.copy(), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.divide(num, den.reshape(shape), out=num)
    bad = ~(den > 1e-6)
    if bad.any():
        index = [slice(None)] * values.ndim
        index[axis] = bad
        out[tuple(index)] = 1.0
    return out
