"""Template matching for standard stars: NumPy kernels, vectorised over templates.

For one star (observed counts on the exposure's pixels) and a prepared grid
(:func:`kspec_xr.prepare_templates`), :func:`fit_star`

1. estimates the radial velocity by FFT cross-correlation on the ln λ grid
   against the templates that best match the star's colours;
2. rebins every candidate template (the nodes in the star's colour Teff
   box), shifted to that velocity, onto the exposure's pixels from their
   running integrals — a block of templates at a time, small enough to stay
   in the CPU cache through steps 2-3;
3. divides the star and every template by their own running mean over
   ~150 Å (same pixel weights), so the throughput and every broad shape drop
   out of both alike, and scores each candidate with χ² or Huber over the
   unmasked pixels (matrix products), a 1 % template error added to the noise;
4. adds the colour χ² of the candidate's synthetic photometry, after
   rescaling the spectral χ² so the best fit has χ²/dof = 1 (template
   mismatch must not drown the colours, which fix the continuum slope);
5. refines (Teff, log g, [M/H]) between grid nodes by minimising that score
   over multilinear mixes of the neighbouring nodes (Powell), refines the
   velocity with parabolas in χ² against the interpolated model, and returns
   the model spectrum on the exposure's pixels (continuum interpolated in log,
   lines linearly) with its synthetic magnitudes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from .._base.status import FitStatus
from .._base.threads import map_threads
from .lsf import fwhm_profile, profile_minimum, trial_fwhms
from .photometry import ColorChi2
from .resample import (
    RebinBuffers,
    bin_log_grid,
    bin_pixels,
    cumulative,
    edges_from_centers,
    rebin_apply,
    rebin_cumulative,
    rebin_plan,
    running_mean,
    smoothing_pixels,
)
from .rv import C_KMS, parabola_peak, xcorr_velocity

__all__ = [
    "TemplateGrid",
    "StarFit",
    "FitBlock",
    "fit_block",
    "FwhmBlock",
    "fwhm_block",
    "teff_candidates",
    "Scorer",
    "fit_star",
    "huber_rho",
    "running_mean",
    "smoothing_pixels",
]

HUBER_K = 1.345  # Huber's constant for 95 % efficiency on Gaussian data


class TemplateGrid:
    """The arrays of a prepared template grid that the fit needs (NumPy only).

    Made by :class:`kspec_xr.templates.PreparedTemplates` (which stores the
    expensive derived arrays once per instrument setup) and rebuilt cheaply
    inside every fit block from arrays passed to it positionally.

    Parameters
    ----------
    loglam : (L,) ln λ of the working grid
    flux, continuum : (N, L) templates at the instrument resolution (float32;
        only the rows of a star's final model are used)
    params : (T, 3) Teff, log g, [M/H] of the templates fitted
    mags : (T, B) their synthetic AB magnitudes
    pairs : (k, 2) band indices of the colors used
    oversample : working pixels per exposure pixel
    rows : (T,) row in ``flux``/``continuum`` of every template (default: all)
    scoring : the grid binned to about one exposure pixel, with
        ``norm`` and ``cumulative`` given (see below), or None
    norm, cumulative : (T, L') templates over their continuum and their running
        integrals (:func:`~kspec_xr.kernels.resample.cumulative`); computed on
        first use when not given
    """

    def __init__(
        self,
        loglam,
        flux,
        continuum,
        params,
        mags,
        pairs,
        oversample: int = 1,
        *,
        rows=None,
        scoring: TemplateGrid | None = None,
        norm=None,
        cumulative=None,
    ):
        self.loglam = np.asarray(loglam, dtype=float)
        self.flux = flux
        self.continuum = continuum
        self.params = np.asarray(params, dtype=float)
        self.mags = np.asarray(mags, dtype=float)
        self.pairs = np.asarray(pairs)
        self.oversample = int(oversample)
        self.rows = np.arange(self.params.shape[0]) if rows is None else np.asarray(rows)
        if norm is not None:
            self.__dict__["norm"] = norm
        if cumulative is not None:
            self.__dict__["_cumulative"] = cumulative
        if scoring is not None:
            scoring.__dict__.update(lattice=self.lattice, axes=self.axes)
            self.__dict__["scoring"] = scoring

    def warm(self) -> None:
        """Make the lazy arrays that every star reads (before threads share the grid)."""
        for grid in (self, self.__dict__.get("scoring")):
            if grid is not None:
                grid.edges, grid.lattice, grid.axes  # noqa: B018 (cached on first access)

    @property
    def dlnl(self) -> float:
        return float(self.loglam[1] - self.loglam[0])

    @cached_property
    def edges(self) -> np.ndarray:
        return edges_from_centers(np.exp(self.loglam))

    @cached_property
    def norm(self) -> np.ndarray:
        """(T, L) templates divided by their own continuum."""
        return np.asarray(self.flux)[self.rows] / np.asarray(self.continuum)[self.rows]

    def node_rows(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, L) float64 normalised spectra and log continua of a few nodes."""
        rows = self.rows[np.asarray(nodes)]
        cont = np.asarray(self.continuum[rows], dtype=float)
        return np.asarray(self.flux[rows], dtype=float) / cont, np.log(cont)

    @cached_property
    def _cumulative(self) -> np.ndarray:
        """(T, L + 1) running integrals of the normalised templates (resample.cumulative)."""
        return cumulative(self.norm, self.edges)

    def rebin_norm(
        self, wave_edges: np.ndarray, rv: float, templates: np.ndarray | None = None
    ) -> np.ndarray:
        """(P, C) normalised templates (all by default) at velocity ``rv`` on the pixels.

        Plain flux-conserving rebinning of the shifted templates, every
        template at once from the running integrals.  (The continuum is smooth
        on a pixel, so rebinning flux/continuum equals rebinned flux over
        rebinned continuum to ~1e-6.)
        """
        return self.rebin_rows(wave_edges, rv, templates).T

    def rebin_rows(
        self, wave_edges: np.ndarray, rv: float, templates: np.ndarray | None = None
    ) -> np.ndarray:
        """(C, P) as :meth:`rebin_norm`, each template one contiguous row."""
        rows = None if templates is None else np.asarray(templates)
        return rebin_cumulative(
            self._cumulative, self.edges, wave_edges, stretch=1.0 + rv / C_KMS, rows=rows
        )

    def binned(self, factor: int) -> TemplateGrid:
        """The grid with ``factor`` working pixels averaged into one (for scoring)."""
        if factor <= 1:
            return self
        flux = np.asarray(self.flux)[self.rows]
        continuum = np.asarray(self.continuum)[self.rows]
        coarse = TemplateGrid(
            bin_log_grid(self.loglam, factor),
            bin_pixels(flux, factor),
            bin_pixels(continuum, factor),
            self.params,
            self.mags,
            self.pairs,
        )
        coarse.__dict__.update(lattice=self.lattice, axes=self.axes)  # shared
        return coarse

    @cached_property
    def scoring(self) -> TemplateGrid:
        """Binned to about one exposure pixel: enough to rank templates, 3× cheaper."""
        return self.binned(self.oversample)

    @cached_property
    def axes(self) -> list[np.ndarray]:
        """The distinct node values of Teff, log g and [M/H]."""
        return [np.unique(self.params[:, k]) for k in range(self.params.shape[1])]

    @cached_property
    def lattice(self) -> np.ndarray:
        """(T, 3) node index of every template along each parameter axis."""
        return np.stack(
            [np.searchsorted(axis, self.params[:, k]) for k, axis in enumerate(self.axes)], axis=1
        ).astype(float)

    def position(self, teff: float, logg: float, mh: float) -> np.ndarray:
        """Fractional lattice position of physical parameters (the inverse of :meth:`physical`)."""
        values = (teff, logg, mh)
        return np.array(
            [
                np.interp(v, axis, np.arange(axis.size))
                for v, axis in zip(values, self.axes, strict=True)
            ]
        )

    def mix(self, target: np.ndarray, nodes: np.ndarray | None = None):
        """The model between grid nodes at lattice position ``target``, on the working grid.

        Multilinear weights over the surrounding nodes (of ``nodes``, default
        all): the continuum is interpolated in log (Planck-like shapes mix
        geometrically), the line pattern and the magnitudes linearly (=
        log flux).  Returns ``(flux, continuum, mags)``.
        """
        nodes = np.arange(self.params.shape[0]) if nodes is None else np.asarray(nodes)
        weights = _interp_weights(self.lattice[nodes], target)
        used = np.flatnonzero(weights > 0)
        node_norm, node_log_cont = self.node_rows(nodes[used])
        continuum = np.exp(weights[used] @ node_log_cont)
        return (
            continuum * (weights[used] @ node_norm),
            continuum,
            weights[used] @ self.mags[nodes[used]],
        )

    def mix_mags(self, target: np.ndarray, nodes: np.ndarray | None = None) -> np.ndarray:
        """The magnitudes of :meth:`mix` alone (no spectra read)."""
        nodes = np.arange(self.params.shape[0]) if nodes is None else np.asarray(nodes)
        weights = _interp_weights(self.lattice[nodes], target)
        used = np.flatnonzero(weights > 0)
        return weights[used] @ self.mags[nodes[used]]

    def model_at(self, teff, logg, mh, rv, wave_edges) -> np.ndarray:
        """(P,) model flux at parameters and velocity ``rv``, averaged over the pixel bins."""
        flux, _, _ = self.mix(self.position(teff, logg, mh))
        return _shifted(self, wave_edges, rv, cumulative(flux[None, :], self.edges))[0]

    def physical(self, index: np.ndarray) -> np.ndarray:
        """Parameters at a fractional lattice position (linear between nodes)."""
        return np.array(
            [
                np.interp(i, np.arange(axis.size), axis)
                for i, axis in zip(index, self.axes, strict=True)
            ]
        )


@dataclass
class StarFit:
    """The result of :func:`fit_star` for one star (NaN everywhere when it failed)."""

    teff: float
    logg: float
    mh: float
    rv: float
    score: float
    chi2_red: float
    best: int
    runner_up: int
    runner_up_score: float
    model: np.ndarray  # (P,) surface flux of the refined model at the exposure's pixels
    model_mags: np.ndarray  # (B,)
    n_pixels: int
    status: FitStatus = FitStatus.OK
    ebv: float = 0.0  # E(B-V) the model is reddened by (given, or fitted to the colours)
    ebv_err: float = np.nan  # its 1σ when fitted


def huber_rho(r: np.ndarray, k: float = HUBER_K) -> np.ndarray:
    """Huber's loss of normalised residuals: r²/2 inside ±k, k(|r| − k/2) outside."""
    a = np.abs(r)
    return np.where(a <= k, 0.5 * r * r, k * (a - 0.5 * k))


def _shifted(grid, wave_edges, rv, cum) -> np.ndarray:
    """Spectra on the working grid (as running integrals), shifted by ``rv``, on the pixels."""
    return rebin_cumulative(cum, grid.edges, wave_edges, stretch=1.0 + rv / C_KMS)


#: candidate spectra rebinned, smoothed and scored together (rows of 4096 pixels:
#: ~1 MB per array, so that a block's arrays stay in the CPU cache)
_BLOCK = 32


class _CandidateSpectra:
    """The candidates' normalised spectra on a star's pixels, and their running means.

    ``self(local)`` → ``(norm, smooth)``, (k, P) each, for candidates
    ``candidates[local]`` at velocity ``rv``: rebinned from the running
    integrals (:func:`~kspec_xr.kernels.resample.rebin_apply`), smoothed with
    the star's pixel weights.  Row by row the same numbers whichever rows are
    asked for together.
    """

    def __init__(self, grid, candidates, wave_edges, rv, gpix, width):
        self.cum = grid._cumulative
        self.rows = np.asarray(candidates)
        self.plan = rebin_plan(grid.edges, wave_edges, stretch=1.0 + rv / C_KMS)
        self.gpix, self.width = gpix, width

    def __call__(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        norm = rebin_apply(self.cum, self.plan, self.rows[local])
        return norm, running_mean(norm, self.gpix, self.width, axis=-1)

    def scores(self, scorer: Scorer) -> np.ndarray:
        """(C,) ``scorer`` of every candidate's normalised model, block by block.

        The blocks are worked in the same few scratch arrays (the numbers are
        those of :meth:`__call__`).
        """
        n = self.rows.size
        block = min(_BLOCK, n)
        buffers = RebinBuffers(block, self.gpix.size)
        smooth = np.empty((block, self.gpix.size))
        out = np.empty(n)
        for first in range(0, n, block):
            rows = self.rows[first : first + block]
            norm = rebin_apply(self.cum, self.plan, rows, buffers=buffers)
            k = rows.size
            running_mean(norm, self.gpix, self.width, axis=-1, out=smooth[:k])
            out[first : first + k] = scorer.rows(np.divide(norm, smooth[:k], out=norm))
        return out


def _refine(lattice, spectra, mags_t, scorer, colours, inflate, start):
    """Minimise the score over continuous (Teff, log g, [M/H]) around the best node.

    The model at a fractional lattice position is the multilinear mix of the
    surrounding nodes' normalised spectra (and of their fluxes through each
    band, for the colours); Powell's method searches the box of ±1 node.
    ``spectra``: a :class:`_CandidateSpectra` of the nodes of ``lattice`` (C, 3).
    """
    from scipy.optimize import minimize

    cells = _Cells(lattice)
    colour_t = mags_t[:, colours.blue] - mags_t[:, colours.red]  # colours mix as the mags
    nodes: dict[int, tuple] = {}  # every node's (normalised spectrum, running mean), made once
    blocks: dict[tuple, tuple] = {}  # the rows of the nodes around a cell, stacked once

    def objective(t):
        used, weights = cells.weights(t)
        block = blocks.get(used)
        if block is None:
            new = np.array([n for n in used if n not in nodes], dtype=np.intp)
            if new.size:
                for n, norm, smooth in zip(new.tolist(), *spectra(new), strict=True):
                    nodes[n] = (norm, smooth)
            block = blocks[used] = (
                np.stack([nodes[n][0] for n in used]),
                np.stack([nodes[n][1] for n in used]),
                colour_t[list(used)],
            )
        model = (weights @ block[0]) / (weights @ block[1])
        return scorer(model) / inflate + colours.first_colours(weights @ block[2])

    edge_lo, edge_hi = lattice.min(axis=0), lattice.max(axis=0)
    best_x, best_value = start.astype(float), objective(start)
    for _ in range(4):  # recentre while the optimum sits on the box's inner edge
        lo = np.maximum(start - 1.0, edge_lo)
        hi = np.minimum(start + 1.0, edge_hi)
        result = minimize(
            objective,
            start.astype(float),
            method="Powell",
            bounds=list(zip(lo, hi, strict=True)),
            options={"xtol": 2e-2, "ftol": 1e-4},
        )
        if result.fun < best_value:
            best_x, best_value = result.x, float(result.fun)
        on_edge = ((result.x <= lo + 1e-3) & (lo > edge_lo)) | (
            (result.x >= hi - 1e-3) & (hi < edge_hi)
        )
        if not np.any(on_edge):
            break
        start = np.round(result.x)
    return best_x, best_value


class _Cells:
    """:func:`_interp_weights` of nodes on an integer lattice, from the cell's 8 corners.

    The nodes with a positive weight are the corners of the lattice cell
    around the target; a table from lattice position to node finds them, so
    that a weight costs O(8) scalar operations, not O(C) array ones.  Missing
    corners (holes in the grid) drop out and the rest are renormalised, as in
    :func:`_interp_weights`.
    """

    def __init__(self, lattice: np.ndarray):
        self.lattice = np.asarray(lattice, dtype=float)
        index = np.rint(self.lattice).astype(np.intp)
        self.table = {tuple(row): n for n, row in enumerate(index.tolist())}
        self.cells: dict[tuple, list] = {}
        # exact for distinct integer nodes in 3 dimensions; otherwise every node is weighed
        self.exact = (
            self.lattice.ndim == 2
            and self.lattice.shape[1] == 3
            and np.array_equal(index, self.lattice)
            and len(self.table) == len(index)
        )

    def weights(self, target: np.ndarray) -> tuple[tuple, np.ndarray]:
        """(nodes, weights): the nodes of positive weight (ascending) and their weights."""
        if self.exact:
            t0, t1, t2 = np.asarray(target, dtype=float).tolist()
            b0, b1, b2 = math.floor(t0), math.floor(t1), math.floor(t2)
            corners = self.cells.get((b0, b1, b2))
            if corners is None:  # the cell's nodes (ascending) and their corner offsets
                corners = self.cells[b0, b1, b2] = sorted(
                    (node, i, j, k)
                    for i in (0, 1)
                    for j in (0, 1)
                    for k in (0, 1)
                    if (node := self.table.get((b0 + i, b1 + j, b2 + k))) is not None
                )
            # the factors of _interp_weights, max(1 - |node - target|, 0), per axis
            f0 = (max(1.0 - abs(b0 - t0), 0.0), max(1.0 - abs(b0 + 1 - t0), 0.0))
            f1 = (max(1.0 - abs(b1 - t1), 0.0), max(1.0 - abs(b1 + 1 - t1), 0.0))
            f2 = (max(1.0 - abs(b2 - t2), 0.0), max(1.0 - abs(b2 + 1 - t2), 0.0))
            nodes, weights = [], []
            for node, i, j, k in corners:
                weight = f0[i] * f1[j] * f2[k]
                if weight > 0:
                    nodes.append(node)
                    weights.append(weight)
            if nodes:
                total = sum(weights)
                return tuple(nodes), np.array([w / total for w in weights])
        weights = _interp_weights(self.lattice, np.asarray(target, dtype=float))
        used = np.flatnonzero(weights)
        return tuple(used.tolist()), weights[used]


def _interp_weights(lattice: np.ndarray, target: np.ndarray):
    """Multilinear weights over the nodes around ``target`` (fractional lattice units)."""
    scaled = lattice
    weights = np.prod(np.clip(1.0 - np.abs(scaled - target), 0.0, None), axis=1)
    if weights.sum() <= 0:
        weights[np.argmin(np.sum((scaled - target) ** 2, axis=1))] = 1.0
    return weights / weights.sum()


def fit_star(*args, **options) -> StarFit:
    """Fit one standard star; see the module docstring for the steps.

    Parameters
    ----------
    wave : (P,) exposure wavelengths (Å)
    flux, variance : (P,) observed counts and their variance
    good : (P,) bool, pixels to use
    mags, mag_errs : (B,) catalogue AB magnitudes in the grid's bands (NaN = missing)
    grid : TemplateGrid
    candidates : (C,) int, template indices to consider (the colour Teff box)
    metric : {"chi2", "huber"}
    vmax : float, velocity search range (km/s)
    n_xcorr : int, templates (best by colour) used for the velocity estimate
    model_error : float, fractional template error per pixel, added in quadrature
        to the noise of the normalised star: no grid matches a real star
        better than this, and without it the spectrum outweighs the colours
    smooth_scale : float, width (Å) of the running mean that star and templates
        are divided by before they are compared
    ebv : float, the star's E(B−V) (NaN: fit it to the colours, in [ebv_min,
        ebv_max], as each candidate's colours are scored; a negative ``ebv_min``
        keeps the estimates unbiased for a median over the field, which is
        then clipped at 0)
    reddening : (B,) A_band/E(B−V) of the grid's bands; extinction : (P,)
        A(λ)/E(B−V) at the pixels (both needed for any reddening: the model
        and its magnitudes are returned reddened by ``ebv``)
    final : bool, False: stop after the refinement of the parameters (their
        magnitudes and E(B−V) are computed; the velocity is the
        cross-correlation's and the model is NaN), for a fit that is redone
    """
    scored = score_candidates(*args, **options)
    return scored if isinstance(scored, StarFit) else finish_fit(scored)


@dataclass
class _Scored:
    """What :func:`score_candidates` hands to :func:`finish_fit` for one star."""

    wave: np.ndarray
    wave_edges: np.ndarray
    grid: TemplateGrid
    candidates: np.ndarray
    lattice: np.ndarray
    spectra: _CandidateSpectra
    scorer: Scorer
    scorer_chi2: Scorer
    colours: ColorChi2
    inflate: float
    total: np.ndarray
    best_local: int
    chi2_red: float
    rv: float
    gpix: np.ndarray
    width: int
    n_good: int
    n_col: int
    fit_ebv: bool
    ebv: float
    reddening: np.ndarray | None
    extinction: np.ndarray | None
    final: bool


def score_candidates(
    wave: np.ndarray,
    flux: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    mags: np.ndarray,
    mag_errs: np.ndarray,
    grid: TemplateGrid,
    candidates: np.ndarray,
    *,
    metric: str = "chi2",
    vmax: float = 500.0,
    n_xcorr: int = 5,
    model_error: float = 0.01,
    smooth_scale: float = 150.0,
    ebv: float = 0.0,
    reddening: np.ndarray | None = None,
    extinction: np.ndarray | None = None,
    ebv_max: float = 0.5,
    ebv_min: float = 0.0,
    final: bool = True,
) -> StarFit | _Scored:
    """Steps 1-4 of :func:`fit_star`, whose parameters these are (velocity, every
    candidate scored, the colours added): the part that runs outside the GIL, so
    that a block's stars do it in threads.

    Returns the state :func:`finish_fit` goes on from, or the failed :class:`StarFit`.
    """
    n_pix = wave.size
    nan_fit = StarFit(
        *(np.nan,) * 6,
        -1,
        -1,
        np.nan,
        np.full(n_pix, np.nan),
        np.full(grid.mags.shape[1], np.nan),
        0,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(good & (variance > 0) & np.isfinite(flux), 1.0 / variance, 0.0)
    n_good = int(np.count_nonzero(ivar))
    if n_good < 50 or candidates.size == 0:
        nan_fit.status = FitStatus.TOO_FEW_PIXELS if n_good < 50 else FitStatus.NO_CANDIDATE
        return nan_fit
    flux = np.where(ivar > 0, flux, 0.0)
    wave_edges = edges_from_centers(wave)

    fit_ebv = reddening is not None and not np.isfinite(ebv)
    if reddening is not None and np.isfinite(ebv) and ebv != 0.0:
        mags = mags - ebv * reddening  # intrinsic colours, compared with the templates'
    colours = ColorChi2(
        mags,
        mag_errs,
        grid.pairs,
        reddening=reddening if fit_ebv else None,
        ebv_max=ebv_max,
        ebv_min=ebv_min,
    )
    col_chi2, n_col = colours(grid.mags[candidates])[0], int(colours.n_colors[0])

    # 1. velocity from the templates closest in colour, on the ln λ scoring grid,
    #    star and templates divided by their own running mean
    order = np.argsort(col_chi2, kind="stable")[: max(1, n_xcorr)]
    coarse = grid.scoring
    lam_work = np.exp(coarse.loglam)
    inside = (lam_work > wave[0]) & (lam_work < wave[-1])
    w_on_log = (np.interp(lam_work, wave, (ivar > 0).astype(float)) > 0.999) & inside
    w_on_log = w_on_log.astype(float)
    width_log = smoothing_pixels(lam_work, smooth_scale)
    obs_on_log = np.interp(lam_work, wave, flux)
    with np.errstate(divide="ignore", invalid="ignore"):  # a star with no counts: no velocity
        spec = obs_on_log / running_mean(obs_on_log, w_on_log, width_log) - 1.0
    spec = np.where(np.isfinite(spec), spec, 0.0)
    refs = coarse.norm[candidates[order]]
    refs = refs / running_mean(refs, w_on_log, width_log, axis=-1) - 1.0
    velocity, _ = xcorr_velocity(
        np.where(w_on_log > 0, spec, 0.0), w_on_log, refs, coarse.dlnl, vmax=vmax
    )
    rv = float(np.median(velocity))

    # 2.-3. every candidate on the exposure's pixels, normalised, scored, in
    #    blocks of rows that stay in the CPU cache
    lattice = grid.lattice[candidates]
    # star and templates divided by their own running mean over `width` pixels
    # (the same weights): the throughput and every broad shape drop out of
    # both alike, so the score sees the lines and the colours fix the slope
    width = smoothing_pixels(wave, smooth_scale)
    gpix = (ivar > 0).astype(float)
    obs_smooth = running_mean(flux, gpix, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        obs_norm = np.where(obs_smooth > 0, flux / obs_smooth, 0.0)
        var_norm = np.where(ivar > 0, 1.0 / (ivar * obs_smooth**2), np.inf)
        w = np.where(obs_smooth > 0, 1.0 / (var_norm + model_error**2), 0.0)
    scorer = Scorer(obs_norm, w, metric)
    spectra = _CandidateSpectra(coarse, candidates, wave_edges, rv, gpix, width)
    spec_score = spectra.scores(scorer)
    best_local = int(np.argmin(spec_score))
    dof = max(n_good - 1, 1)
    scorer_chi2 = Scorer(obs_norm, w, "chi2")
    norm_b, smooth_b = spectra(np.array([best_local]))
    chi2_red = float(scorer_chi2(norm_b[0] / smooth_b[0])) / dof
    inflate = max(1.0, chi2_red)
    total = spec_score / inflate + col_chi2
    best_local = int(np.argmin(total))
    return _Scored(
        wave=wave, wave_edges=wave_edges, grid=grid, candidates=candidates, lattice=lattice,
        spectra=spectra, scorer=scorer, scorer_chi2=scorer_chi2, colours=colours,
        inflate=inflate, total=total, best_local=best_local, chi2_red=chi2_red, rv=rv,
        gpix=gpix, width=width, n_good=n_good, n_col=n_col, fit_ebv=fit_ebv, ebv=ebv,
        reddening=reddening, extinction=extinction, final=final,
    )  # fmt: skip


def finish_fit(state: _Scored) -> StarFit:
    """Step 5 of :func:`fit_star`: the parameters refined between nodes (Powell), the
    velocity against the refined model, and the model (Python-heavy: one star at a time)."""
    (
        wave, wave_edges, grid, candidates, lattice, spectra, scorer, scorer_chi2, colours,
        inflate, total, best_local, chi2_red, rv, gpix, width, n_good, n_col, fit_ebv, ebv,
        reddening, extinction, final,
    ) = (getattr(state, field.name) for field in dataclasses.fields(state))  # fmt: skip
    n_pix = wave.size
    target, refined_score = _refine(
        lattice,
        spectra,
        grid.mags[candidates],
        scorer,
        colours,
        inflate,
        lattice[best_local],
    )

    # 4.-5. the velocity against the refined model, then the final model
    ranked = np.argsort(total, kind="stable")
    runner = int(ranked[1]) if ranked.size > 1 else -1
    teff, logg, mh = grid.physical(target)
    if final:
        fine_model, fine_cont, model_mags = grid.mix(target, candidates)
        final_cum = cumulative(np.stack([fine_model, fine_cont]), grid.edges)  # once per star
        step_v = C_KMS * grid.dlnl * grid.oversample
        for shrink in (1.0, 0.25):  # a parabola over ±1 pixel, then over ±1/4 pixel
            step = step_v * shrink
            chi = []
            for v in rv + step * np.array([-1.0, 0.0, 1.0]):
                model_v, cont_v = _shifted(grid, wave_edges, v, final_cum)
                pattern = model_v / cont_v
                chi.append(scorer_chi2(pattern / running_mean(pattern, gpix, width)))
            rv = float(rv + step * parabola_peak(*chi))
        model = _shifted(grid, wave_edges, rv, final_cum[0])
    else:  # E(B-V) only: no velocity refinement, no model spectrum
        model_mags = grid.mix_mags(target, candidates)
        model = np.full(n_pix, np.nan)
    ebv_err = np.nan
    if fit_ebv:
        colours(model_mags)
        ebv = float(colours.last_ebv[0, 0]) if colours.last_ebv is not None else 0.0
        ebv_err = float(colours.ebv_error()[0])
    elif not np.isfinite(ebv) or reddening is None:
        ebv = 0.0
    if ebv and reddening is not None and extinction is not None:
        model = model * 10.0 ** (-0.4 * ebv * extinction)
        model_mags = model_mags + ebv * reddening

    return StarFit(
        teff=float(teff),
        logg=float(logg),
        mh=float(mh),
        rv=rv,
        score=refined_score,
        chi2_red=chi2_red,
        best=int(candidates[best_local]),
        runner_up=int(candidates[runner]) if runner >= 0 else -1,
        runner_up_score=float(total[runner]) if runner >= 0 else np.nan,
        model=model,
        model_mags=model_mags,
        n_pixels=n_good,
        status=FitStatus.OK if n_col else FitStatus.NO_COLORS,
        ebv=float(ebv),
        ebv_err=ebv_err,
    )


fit_star.__signature__ = inspect.signature(score_candidates).replace(  # type: ignore[attr-defined]
    return_annotation=StarFit
)


class Scorer:
    """Scores of model spectra against one normalised star (divided by its running mean).

    ``chi2``: Σ w (obs − m)²; ``huber``: 2 Σ ρ_Huber((obs − m)·√w).  The
    star's terms are computed once; a model costs two dot products (χ²).
    """

    def __init__(self, obs_norm: np.ndarray, w: np.ndarray, metric: str):
        if metric not in ("chi2", "huber"):
            raise ValueError(f"metric must be 'chi2' or 'huber', not {metric!r}")
        self.metric = metric
        self.obs = obs_norm
        self.w = w
        self.wo = w * obs_norm
        self.a = float(np.sum(self.wo * obs_norm))
        self.sw = np.sqrt(w)

    def __call__(self, models: np.ndarray) -> np.ndarray:
        """(P,) → scalar, or (P, C) → (C,)."""
        if self.metric == "chi2":
            # the square expanded: matrix-vector products, no (P, C) residual array
            return self.a - 2.0 * (self.wo @ models) + self.w @ (models * models)
        resid = (self.obs if models.ndim == 1 else self.obs[:, None]) - models
        resid = resid * (self.sw if models.ndim == 1 else self.sw[:, None])
        return 2.0 * np.sum(huber_rho(resid), axis=0)

    def rows(self, models: np.ndarray) -> np.ndarray:
        """(C, P) → (C,): the scores of models stored one per row (contiguous).

        As einsum loops, not BLAS: a threaded gemv wakes its threads for every
        call, which costs more than the product on a busy machine.
        """
        if self.metric == "chi2":
            cross = np.einsum("cp,p->c", models, self.wo)
            return self.a - 2.0 * cross + np.einsum("cp,cp,p->c", models, models, self.w)
        return 2.0 * np.sum(huber_rho((models - self.obs) * self.sw), axis=-1)


def teff_candidates(teff: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Templates whose Teff lies in the box widened to the grid nodes that bracket it.

    The refinement interpolates between nodes, so the nodes just outside the
    color box must be candidates too, or a star near the box edge is pinned
    to the last node inside it.
    """
    nodes = np.unique(teff)
    below = nodes[nodes <= lo]
    above = nodes[nodes >= hi]
    first = below[-1] if below.size else nodes[0]
    last = above[0] if above.size else nodes[-1]
    return np.flatnonzero((teff >= first) & (teff <= last))


class FitBlock(NamedTuple):
    """The results of :func:`fit_block` for a block of S stars, by name."""

    teff: np.ndarray  # (S,)
    logg: np.ndarray
    mh: np.ndarray
    rv: np.ndarray
    score: np.ndarray
    chi2_red: np.ndarray
    template: np.ndarray  # (S,) int: best node (index into the fitted templates)
    runner_up: np.ndarray  # (S,) int
    runner_up_score: np.ndarray
    status: np.ndarray  # (S,) FitStatus codes
    model: np.ndarray  # (S, P)
    model_mags: np.ndarray  # (S, B)
    ebv: np.ndarray  # (S,) E(B-V) the model is reddened by
    ebv_err: np.ndarray  # (S,) its 1σ when fitted (NaN when given)


def fit_block(
    flux,
    variance,
    good,
    mags,
    errs,
    teff_lo,
    teff_hi,
    ebv,
    wave,
    extinction,
    loglam,
    template_flux,
    template_continuum,
    rows,
    params,
    template_mags,
    scoring_loglam,
    scoring_norm,
    scoring_cumulative,
    *,
    pairs,
    oversample: int,
    metric: str,
    vmax: float,
    reddening=None,
    ebv_max: float = 0.5,
    ebv_min: float = 0.0,
    first_pass: bool = False,
    threads: int = 1,
) -> FitBlock:
    """Fit every star of a block: stars (S, P) and (S, B), the grid's arrays as given.

    The grid arrays are those of :meth:`kspec_xr.templates.PreparedTemplates.kernel_inputs`
    (of ``template_flux``/``template_continuum`` only the rows ``rows[nodes]``
    of each star's final model are used).  ``ebv`` (S,) E(B−V) per star (NaN:
    fitted), ``extinction`` (P,) A(λ)/E(B−V) at the pixels, ``reddening`` (B,)
    A_band/E(B−V) of the grid's bands (None: no reddening at all).
    ``first_pass``: only the fitted E(B−V) (and the status) of the stars
    without a given one are wanted, for a fit that is redone: those stars
    stop after the parameters (``fit_star(final=False)``: no velocity
    refinement, model NaN) and the stars with a given E(B−V) are not fitted.
    ``threads``: stars scored at once, each then refined in turn (the same
    numbers; see :mod:`kspec_xr._base.threads`).
    """
    scoring = TemplateGrid(
        scoring_loglam,
        None,
        None,
        params,
        template_mags,
        pairs,
        norm=scoring_norm,
        cumulative=scoring_cumulative,
    )
    grid = TemplateGrid(
        loglam,
        template_flux,
        template_continuum,
        params,
        template_mags,
        pairs,
        oversample,
        rows=rows,
        scoring=scoring,
    )
    n_star, n_pix = flux.shape
    out = {name: np.full(n_star, np.nan) for name in FitBlock._fields[:9]}
    out["template"] = np.full(n_star, -1, dtype=np.int64)
    out["runner_up"] = np.full(n_star, -1, dtype=np.int64)
    out["status"] = np.zeros(n_star, dtype=np.int16)
    out["model"] = np.full((n_star, n_pix), np.nan)
    out["model_mags"] = np.full((n_star, grid.mags.shape[1]), np.nan)
    out["ebv"] = np.full(n_star, np.nan)
    out["ebv_err"] = np.full(n_star, np.nan)

    def scored(s: int) -> StarFit | _Scored | FitStatus | None:
        if not np.any(np.isfinite(mags[s])):
            return FitStatus.NO_PHOTOMETRY
        if first_pass and np.isfinite(ebv[s]):
            return None
        candidates = teff_candidates(grid.params[:, 0], teff_lo[s], teff_hi[s])
        return score_candidates(
            wave, flux[s], variance[s], good[s], mags[s], errs[s], grid, candidates,
            metric=metric, vmax=vmax, ebv=float(ebv[s]), reddening=reddening,
            extinction=extinction, ebv_max=ebv_max, ebv_min=ebv_min, final=not first_pass,
        )  # fmt: skip

    # the stars scored in threads (array work, outside the GIL); each then refined in
    # turn: the refinement is Python-heavy, and two at once contend for the GIL
    grid.warm()  # the shared lazy arrays made once, before any thread reads them
    states = list(map_threads(scored, range(n_star), min(threads, n_star)))
    for s, state in enumerate(states):
        if state is None:
            continue
        if not isinstance(state, StarFit | _Scored):
            out["status"][s] = state
            continue
        fit = state if isinstance(state, StarFit) else finish_fit(state)
        states[s] = None  # its candidates' arrays freed as it goes
        for name, value in (
            ("teff", fit.teff),
            ("logg", fit.logg),
            ("mh", fit.mh),
            ("rv", fit.rv),
            ("score", fit.score),
            ("chi2_red", fit.chi2_red),
            ("template", fit.best),
            ("runner_up", fit.runner_up),
            ("runner_up_score", fit.runner_up_score),
            ("status", fit.status),
        ):
            out[name][s] = value
        out["model"][s] = fit.model
        out["model_mags"][s] = fit.model_mags
        out["ebv"][s], out["ebv_err"][s] = fit.ebv, fit.ebv_err
    return FitBlock(**out)


class FwhmBlock(NamedTuple):
    """The results of :func:`fwhm_block` for S stars: FWHM (Å) and 1σ, whole and per segment."""

    fwhm: np.ndarray  # (S,)
    fwhm_err: np.ndarray  # (S,)
    segment_fwhm: np.ndarray  # (S, n_segments)
    segment_err: np.ndarray  # (S, n_segments)


def fwhm_block(
    flux,
    variance,
    good,
    teff,
    logg,
    mh,
    rv,
    wave,
    loglam,
    template_flux,
    template_continuum,
    rows,
    params,
    template_mags,
    *_scoring,
    pairs,
    fwhm0: float,
    edges: np.ndarray,
    threads: int = 1,
) -> FwhmBlock:
    """Measure the instrument FWHM on every star of a block (see :mod:`kspec_xr.kernels.lsf`).

    Each star's model at its fitted parameters and velocity is built from a
    grid prepared at the sharp FWHM ``fwhm0`` (the arrays of
    :meth:`kspec_xr.templates.PreparedTemplates.kernel_inputs`); stars with
    no fit (NaN parameters) get NaN.  ``threads``: stars measured at once.
    """
    grid = TemplateGrid(
        loglam, template_flux, template_continuum, params, template_mags, pairs, rows=rows
    )
    wave_edges = edges_from_centers(wave)
    step = float(np.median(np.diff(wave)))
    trials = trial_fwhms(fwhm0, step)
    n_star, n_seg = flux.shape[0], edges.size - 1
    out = FwhmBlock(
        np.full(n_star, np.nan),
        np.full(n_star, np.nan),
        np.full((n_star, n_seg), np.nan),
        np.full((n_star, n_seg), np.nan),
    )

    def one(s: int):
        if not np.all(np.isfinite([teff[s], logg[s], mh[s], rv[s]])):
            return None
        model = grid.model_at(teff[s], logg[s], mh[s], rv[s], wave_edges)
        return fwhm_profile(wave, flux[s], variance[s], good[s], model, fwhm0, trials, edges)

    grid.warm()
    for s, profile in enumerate(map_threads(one, range(n_star), min(threads, n_star))):
        if profile is None:
            continue
        chi2, counts = profile
        for k in range(n_seg + 1):
            value, err = profile_minimum(trials, chi2[k], counts[k] - 1)
            if k == 0:
                out.fwhm[s], out.fwhm_err[s] = value, err
            else:
                out.segment_fwhm[s, k - 1], out.segment_err[s, k - 1] = value, err
    return out
