"""The smoothing + rebinning operator against obvious numerical integration."""

import numpy as np
import pytest
from scipy.stats import norm

from kspec_xr.kernels.resample import (
    cumulative,
    edges_from_centers,
    rebin_cumulative,
    resample_matrix,
)


def _reference(src_edges, values, dst_edges, sigma, n_sub=400):
    """Integrate the Gaussian-smoothed step function over each target bin, slowly."""
    out = np.empty(dst_edges.size - 1)
    for i, (a, b) in enumerate(zip(dst_edges[:-1], dst_edges[1:], strict=True)):
        lam = np.linspace(a, b, n_sub)
        smoothed = np.zeros_like(lam)
        for c, d, v in zip(src_edges[:-1], src_edges[1:], values, strict=True):
            if sigma > 0:
                smoothed += v * (norm.cdf((lam - c) / sigma) - norm.cdf((lam - d) / sigma))
            else:
                smoothed += v * ((lam >= c) & (lam < d))
        out[i] = np.trapezoid(smoothed, lam) / (b - a)
    return out


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.0])
def test_matches_numerical_integration(sigma):
    rng = np.random.default_rng(1)
    src_edges = np.cumsum(np.r_[5000.0, rng.uniform(0.2, 0.5, 120)])
    values = 1.0 + rng.normal(0, 0.3, src_edges.size - 1)
    dst_edges = np.linspace(src_edges[0] + 12, src_edges[-1] - 12, 25)
    matrix = resample_matrix(src_edges, dst_edges, sigma)
    fast = matrix @ values
    slow = _reference(src_edges, values, dst_edges, sigma)
    np.testing.assert_allclose(fast, slow, rtol=2e-3 if sigma == 0 else 2e-4)


def test_conserves_flux_and_flat_spectra():
    src_edges = np.linspace(4000, 6000, 2001)
    dst_edges = np.linspace(4100, 5900, 601)
    sigma = np.linspace(0.5, 3.0, 600)
    matrix = resample_matrix(src_edges, dst_edges, sigma)
    np.testing.assert_allclose(matrix @ np.full(2000, 7.0), 7.0, rtol=1e-12)
    # a narrow line's integrated flux survives smoothing + rebinning
    values = np.zeros(2000)
    values[1000] = 1.0  # bin 5000-5001 Å, integral 1 in flux x Å
    out = matrix @ values
    np.testing.assert_allclose(np.sum(out * np.diff(dst_edges)), 1.0, rtol=1e-4)


def test_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="not inside the source range"):
        resample_matrix(np.linspace(4000, 5000, 11), np.linspace(3990, 4500, 5), 1.0)


def test_edges_of_log_grid_are_geometric():
    centers = 5000 * np.exp(np.arange(10) * 1e-4)
    edges = edges_from_centers(centers)
    np.testing.assert_allclose(np.sqrt(edges[:-1] * edges[1:]), centers, rtol=1e-12)


@pytest.mark.parametrize("stretch", [1.0, 1.0 + 173.0 / 299792.458, 1.0 - 412.0 / 299792.458])
def test_cumulative_rebinning_equals_the_operator(stretch):
    rng = np.random.default_rng(5)
    src = np.cumsum(np.r_[5000.0, rng.uniform(0.1, 0.3, 3000)])
    values = rng.uniform(0.5, 1.5, (4, src.size - 1))
    dst = np.linspace(5050.0, src[-1] - 50.0, 400)
    fast = rebin_cumulative(cumulative(values, src), src, dst, stretch=stretch)
    slow = (resample_matrix(src * stretch, dst, 0.0) @ values.T).T
    np.testing.assert_allclose(fast, slow, rtol=1e-10)
