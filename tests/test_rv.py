"""Radial velocities by FFT cross-correlation on a ln λ grid."""

import numpy as np
import pytest

from kspec_xr.kernels.rv import C_KMS, parabola_peak, xcorr_velocity


def _lines(loglam, centres, depth=0.5, width=2e-4):
    out = np.zeros_like(loglam)
    for c in centres:
        out -= depth * np.exp(-0.5 * ((loglam - np.log(c)) / width) ** 2)
    return out


@pytest.mark.parametrize("velocity", [-430.0, -123.4, 0.0, 57.9, 299.0])
def test_recovers_shift_to_a_small_fraction_of_a_pixel(velocity):
    dlnl = 1e-4  # 30 km/s pixels
    loglam = np.log(4000.0) + dlnl * np.arange(6000)
    rng = np.random.default_rng(2)
    centres = rng.uniform(4200, 7000, 80)
    template = _lines(loglam, centres)
    observed = _lines(loglam, centres * (1 + velocity / C_KMS))
    weight = np.ones_like(loglam)
    weight[2000:2100] = 0.0  # a masked band does not matter
    v, peak = xcorr_velocity(observed, weight, template[None, :], dlnl)
    assert v[0] == pytest.approx(velocity, abs=1.0)  # 1/30 of a pixel
    assert peak[0] > 0.95


def test_one_fft_serves_many_templates():
    dlnl = 1e-4
    loglam = np.log(4000.0) + dlnl * np.arange(4000)
    centres = np.linspace(4100, 5400, 40)
    observed = _lines(loglam, centres * (1 + 100.0 / C_KMS))
    templates = np.stack([_lines(loglam, centres, depth=d) for d in (0.2, 0.5, 0.8)])
    v, _ = xcorr_velocity(observed, np.ones_like(loglam), templates, dlnl)
    np.testing.assert_allclose(v, 100.0, atol=1.0)


def test_parabola_vertex():
    x = np.array([-1.0, 0.0, 1.0])
    y = -((x - 0.3) ** 2)
    assert parabola_peak(*y) == pytest.approx(0.3)
