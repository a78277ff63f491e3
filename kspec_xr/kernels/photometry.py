"""Synthetic photometry and Teff from colors: NumPy kernels (no xarray, no I/O, no state).

* :func:`band_weights` builds the matrix ``W`` that turns spectra into AB
  magnitudes, ``m = -2.5 log10(flux @ W)``, from filter curves given as
  arrays; :func:`mags_from_weights` applies it.
* :class:`ColorChi2` scores model magnitudes against observed colors with
  their covariance; :func:`teff_from_colors` turns that into a Teff estimate
  and a Teff search box per star.

The xarray wrappers are :func:`kspec_xr.synthetic_mags` and
:func:`kspec_xr.teff_from_colors`; the curves come from
:mod:`kspec_xr._base.bands`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .._base.errors import KspecError

__all__ = [
    "Weights",
    "band_weights",
    "trapezoid_weights",
    "mags_from_weights",
    "ColorChi2",
    "color_pair_indices",
    "teff_from_colors",
]

_C_ANGSTROM_PER_S = 2.99792458e18  # speed of light, A/s
_AB_FNU = 3631.0e-23  # AB reference flux density, erg/s/cm2/Hz (3631 Jy)
_MIN_SAMPLES = 5  # fewest grid points inside a band's curve that we integrate over
_NO_COLOR, _GRID_EDGE, _NO_TEMPLATE = 1, 2, 4  # bits of TEFF_FLAGS (kspec_xr._base.bands)


class Weights(NamedTuple):
    """The weights of :func:`band_weights`, restricted to the rows that matter."""

    matrix: np.ndarray  # (stop - start, n_band), includes 1 / AB normalisation
    start: int  # first wavelength index with a non-zero weight in any band
    stop: int  # one past the last such index


def trapezoid_weights(wave: np.ndarray) -> np.ndarray:
    """w such that sum(w * y) == np.trapezoid(y, wave) for any y."""
    dw = np.diff(wave)
    w = np.empty_like(wave)
    w[0] = dw[0] / 2
    w[-1] = dw[-1] / 2
    w[1:-1] = (dw[:-1] + dw[1:]) / 2
    return w


def band_weights(
    wave: np.ndarray, curves: Sequence[tuple[np.ndarray, np.ndarray]], names: Sequence[str]
) -> Weights:
    """Weights ``W`` with ``mag = -2.5 log10(flux @ W)`` on the grid ``wave``.

    ``curves`` are the bands' (wavelength, response) tables (speclite's),
    ``names`` their names for messages.  Column ``b`` is
    ``w_i S_b(λ_i) λ_i / N_b`` with trapezoid weights ``w_i`` and ``N_b`` the
    same sum for a flat f_nu = 3631 Jy spectrum; only the rows where some band
    transmits are kept (``start``, ``stop``).
    """
    lo, hi = wave[0], wave[-1]
    trap = trapezoid_weights(wave)
    ab_flux = _AB_FNU * _C_ANGSTROM_PER_S / wave**2  # f_nu = 3631 Jy as F_lambda
    columns = []
    for band, (fwave, fresp) in zip(names, curves, strict=True):
        # The response is non-zero strictly between fwave[0] and fwave[-1];
        # allow only floating-point rounding (1e-9 relative) at the ends.
        if fwave[0] < lo * (1 - 1e-9) or fwave[-1] > hi * (1 + 1e-9):
            raise KspecError(
                f"band {band!r} transmits over {fwave[0]:.1f}-{fwave[-1]:.1f} A but the "
                f"spectrum covers only {lo:.1f}-{hi:.1f} A; drop that band or extend the "
                "spectrum (e.g. with a model) to cover it"
            )
        column = trap * np.interp(wave, fwave, fresp, left=0.0, right=0.0) * wave
        n_inside = np.count_nonzero(column > 0)
        if n_inside < _MIN_SAMPLES:
            raise KspecError(
                f"the wavelength grid samples band {band!r} ({fwave[0]:.1f}-{fwave[-1]:.1f} A) "
                f"at only {n_inside} points; use a grid at least {_MIN_SAMPLES} points across it"
            )
        norm = ab_flux @ column
        columns.append(column / norm)
    matrix = np.stack(columns, axis=-1)
    used = np.flatnonzero(np.any(matrix > 0, axis=-1))
    start, stop = int(used[0]), int(used[-1]) + 1
    matrix = np.ascontiguousarray(matrix[start:stop])
    matrix.setflags(write=False)
    return Weights(matrix, start, stop)


def mags_from_weights(flux: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """AB magnitudes from (..., n) fluxes and an (n, n_band) weight matrix.

    Non-finite flux where a band has non-zero weight, or a non-positive band
    integral, gives NaN for that band.
    """
    flux = np.asarray(flux, dtype=np.float64)
    finite = np.isfinite(flux)
    if finite.all():
        integral = flux @ matrix
        bad = np.zeros(integral.shape, dtype=bool)
    else:
        integral = np.where(finite, flux, 0.0) @ matrix
        bad = ((~finite).astype(np.float64) @ (matrix > 0).astype(np.float64)) > 0
    bad |= ~(integral > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mags = -2.5 * np.log10(np.where(bad, 1.0, integral))
    mags[bad] = np.nan
    return mags


def color_pair_indices(bands: Sequence[str], colors: Sequence[tuple[str, str]]) -> np.ndarray:
    """(k, 2) indices into ``bands`` of the colors (blue, red band names) whose bands are both there."""
    index = {str(b): i for i, b in enumerate(bands)}
    pairs = colors
    return np.array(
        [[index[b], index[r]] for b, r in pairs if b in index and r in index], dtype=np.intp
    ).reshape(-1, 2)


class ColorChi2:
    """χ² of observed colors against model magnitudes, the covariance built once.

    Parameters
    ----------
    mags, errs : (s, B) arrays
        Observed AB magnitudes and 1σ errors of ``s`` stars (NaN = missing).
    pairs : (k, 2) int array
        Band indices (blue, red) of the colours to use.
    floor : float
        Error floor added in quadrature to every colour, mag.

    Notes
    -----
    Colours ``c = m_blue − m_red`` with covariance ``C = A diag(σ_m²) Aᵀ +
    floor² I`` per star (A maps bands to colours, so colours sharing a band
    are correlated); a model scores ``(c_obs − c_t)ᵀ C⁻¹ (c_obs − c_t)`` over
    the star's available colours.  Colours, not magnitudes: a template's
    absolute level is unknown until it is scaled.
    """

    def __init__(
        self,
        mags: np.ndarray,
        errs: np.ndarray,
        pairs,
        *,
        floor: float = 0.01,
        reddening: np.ndarray | None = None,
        ebv_max: float = 0.0,
        ebv_min: float = 0.0,
    ):
        pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
        mags = np.atleast_2d(mags)
        errs = np.atleast_2d(errs)
        self.blue, self.red = pairs[:, 0], pairs[:, 1]
        n_col = len(pairs)
        obs_col = mags[:, self.blue] - mags[:, self.red]  # (s, k)
        self.avail = (
            np.isfinite(obs_col) & np.isfinite(errs[:, self.blue]) & np.isfinite(errs[:, self.red])
        )
        self.n_colors = self.avail.sum(axis=-1)
        self.obs_col = obs_col
        design = np.zeros((n_col, mags.shape[-1]))
        design[np.arange(n_col), self.blue] = 1.0
        design[np.arange(n_col), self.red] = -1.0
        var = np.where(np.isfinite(errs), errs, 0.0) ** 2
        cov = np.einsum("kb,sb,lb->skl", design, var, design) + floor**2 * np.eye(n_col)
        pair_ok = self.avail[:, :, None] & self.avail[:, None, :]
        cov = np.where(pair_ok, cov, np.eye(n_col))
        self.inv = np.linalg.inv(cov) if n_col else cov
        # reddening profiled out: the colour excess per unit E(B-V) of every colour
        self.ebv_max = float(ebv_max)
        self.ebv_min = float(ebv_min)
        self.excess: np.ndarray | None = None
        if reddening is not None and self.ebv_max > 0:
            r = np.asarray(reddening, dtype=float)
            self.excess = np.where(self.avail, (r[self.blue] - r[self.red])[None, :], 0.0)
        self.last_ebv: np.ndarray | None = None
        self._first: tuple | None = None

    def __call__(self, model_mags: np.ndarray) -> np.ndarray:
        """(t, B) model magnitudes → (s, t) χ² (inf where a model lacks a used colour)."""
        model_mags = np.atleast_2d(model_mags)
        model_col = model_mags[:, self.blue] - model_mags[:, self.red]  # (t, k)
        resid = np.where(
            self.avail[:, None, :], self.obs_col[:, None, :] - model_col[None, :, :], 0.0
        )
        missing = (self.avail[:, None, :] & ~np.isfinite(model_col)[None, :, :]).any(axis=-1)
        resid = np.where(np.isfinite(resid), resid, 0.0)
        if self.excess is not None:
            # χ²(E) = (r − E·d)ᵀ C⁻¹ (r − E·d) is a parabola in E: its minimum in [0, ebv_max]
            inv_d = np.einsum("skl,sl->sk", self.inv, self.excess)  # (s, k)
            curvature = np.einsum("sk,sk->s", self.excess, inv_d)  # (s,)
            with np.errstate(invalid="ignore", divide="ignore"):
                ebv = np.einsum("stk,sk->st", resid, inv_d) / curvature[:, None]
            ebv = np.clip(np.where(np.isfinite(ebv), ebv, 0.0), self.ebv_min, self.ebv_max)
            resid = resid - ebv[:, :, None] * self.excess[:, None, :]
            self.last_ebv = ebv
        chi2 = np.einsum("stk,skl,stl->st", resid, self.inv, resid)
        chi2[missing] = np.inf
        return chi2

    def first(self, model_mags: np.ndarray) -> float:
        """``self(model_mags)[0, 0]`` for one model (B,) and the first star, faster.

        The same arithmetic without the (s, t) broadcasting, for an optimiser
        that scores one model at a time; sets :attr:`last_ebv` alike.
        """
        return self.first_colours(model_mags[self.blue] - model_mags[self.red])

    def first_colours(self, model_col: np.ndarray) -> float:
        """:meth:`first` of a model's colours (k,): ``m[blue] − m[red]``."""
        if self._first is None:  # the first star's terms, once
            inv = self.inv[0]
            d = inv_d = curvature = None
            if self.excess is not None:
                d = self.excess[0]
                inv_d = inv @ d
                curvature = np.float64(d @ inv_d)
            self._first = (self.avail[0], self.obs_col[0], inv, d, inv_d, curvature)
        avail, obs_col, inv, d, inv_d, curvature = self._first
        resid = obs_col - model_col
        resid = np.where(avail & np.isfinite(resid), resid, 0.0)
        if d is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                ebv = float((resid @ inv_d) / curvature)
            ebv = min(max(ebv if np.isfinite(ebv) else 0.0, self.ebv_min), self.ebv_max)
            resid = resid - ebv * d
            self.last_ebv = np.array([[ebv]])
        if (avail & ~np.isfinite(model_col)).any():
            return np.inf
        return float(resid @ inv @ resid)

    def ebv_error(self) -> np.ndarray:
        """(s,) 1σ of a fitted E(B−V) from the colours alone (NaN without reddening)."""
        if self.excess is None:
            return np.full(self.obs_col.shape[0], np.nan)
        curvature = np.einsum("sk,skl,sl->s", self.excess, self.inv, self.excess)
        with np.errstate(divide="ignore"):
            return 1.0 / np.sqrt(curvature)


def teff_from_colors(
    mags: np.ndarray,
    errs: np.ndarray,
    grid_mags: np.ndarray,
    grid_teff: np.ndarray,
    *,
    pairs: np.ndarray,
    floor: float,
    nsigma: float,
    teff_step: float | None,
) -> tuple[np.ndarray, ...]:
    """χ² color match of stars (..., n_band) against templates (n_template, n_band).

    See :func:`kspec_xr.teff_from_colors` for the method.  ``flag`` bits:
    ``TEFF_FLAGS`` of :mod:`kspec_xr._base.bands` (1 no color, 2 grid edge,
    4 no template).  Returns teff, teff_lo, teff_hi, n_colors, chi2_min,
    flag, each (...).
    """
    shape = mags.shape[:-1]
    mags = mags.reshape(-1, mags.shape[-1])
    errs = errs.reshape(-1, errs.shape[-1])
    n_star = mags.shape[0]
    metric = ColorChi2(mags, errs, pairs, floor=floor)
    n_colors = metric.n_colors
    chi2 = metric(grid_mags)

    # χ² profile over Teff: best template at each Teff node.
    order = np.argsort(grid_teff, kind="stable")
    nodes, first = np.unique(grid_teff[order], return_index=True)
    profile = np.minimum.reduceat(chi2[:, order], first, axis=1)  # (s, u)
    n_node = nodes.size
    best = np.argmin(profile, axis=1)
    rows = np.arange(n_star)
    chi2_min = profile[rows, best]

    # Sub-node Teff: vertex of the parabola through the minimum and its neighbours.
    lo_i, hi_i = np.clip(best - 1, 0, n_node - 1), np.clip(best + 1, 0, n_node - 1)
    x0, x1, x2 = nodes[lo_i], nodes[best], nodes[hi_i]
    y0, y1, y2 = profile[rows, lo_i], chi2_min, profile[rows, hi_i]
    with np.errstate(divide="ignore", invalid="ignore"):
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        curv = (d12 - d01) / (x2 - x0)
        vertex = 0.5 * (x0 + x1) - d01 / (2 * curv)
    interior = (best > 0) & (best < n_node - 1) & np.isfinite(y0 + y2) & (curv > 0)
    teff = np.where(interior, np.clip(vertex, x0, x2), x1)

    # Search box: every node within Δχ² ≤ nsigma² of the minimum, widened to at
    # least one grid step either side of the estimate.
    accepted = profile <= (chi2_min + nsigma**2)[:, None]
    node_grid = np.broadcast_to(nodes, profile.shape)
    box_lo = np.where(accepted, node_grid, np.inf).min(axis=1)
    box_hi = np.where(accepted, node_grid, -np.inf).max(axis=1)
    if teff_step is None:  # the local node spacing below / above the best node
        step_lo = np.where(best > 0, x1 - x0, x2 - x1)
        step_hi = np.where(best < n_node - 1, x2 - x1, x1 - x0)
    else:
        step_lo = step_hi = teff_step
    box_lo = np.maximum(np.minimum(box_lo, teff - step_lo), nodes[0])
    box_hi = np.minimum(np.maximum(box_hi, teff + step_hi), nodes[-1])

    no_colour = n_colors == 0
    no_template = ~no_colour & ~np.isfinite(chi2_min)
    unusable = no_colour | no_template
    flag = (
        no_colour * _NO_COLOR
        + no_template * _NO_TEMPLATE
        + (~unusable & (n_node > 1) & ((best == 0) | (best == n_node - 1))) * _GRID_EDGE
    ).astype(np.int32)
    teff = np.where(unusable, np.nan, teff)
    chi2_min = np.where(unusable, np.nan, chi2_min)
    box_lo = np.where(unusable, nodes[0], box_lo)
    box_hi = np.where(unusable, nodes[-1], box_hi)
    return tuple(
        a.reshape(shape) for a in (teff, box_lo, box_hi, n_colors.astype(np.int32), chi2_min, flag)
    )
