"""The nightly transfer function: shape from many exposures, grey factor per exposure."""

import numpy as np
import pytest
import xarray as xr

from kspec_xr._base.errors import CalibrationError
from kspec_xr._base.maskbits import bit
from kspec_xr.nightly import nightly_transfer


def _exposure(scale, noise, seed, wave):
    rng = np.random.default_rng(seed)
    shape = 1e-18 * (1 + ((wave - 6000) / 3000) ** 2)
    cal = scale * shape * (1 + noise * rng.normal(size=wave.size))
    mask = np.zeros(wave.size, "int32")
    mask[100:120] = bit("TELLURIC")
    return xr.Dataset(
        {
            "calibration": ("wavelength", cal, {"units": "erg/cm2/s/A/count"}),
            "calibration_variance": ("wavelength", (noise * scale * shape) ** 2),
            "calibration_mask": ("wavelength", mask),
        },
        coords={"wavelength": wave},
    ), shape


def test_shape_and_grey_factors():
    wave = np.linspace(4000, 9000, 500)
    scales = [1.0, 1.02, 0.98, 1.5, 1.01]  # the fourth is cloudy
    exposures = [_exposure(s, 0.01, k, wave)[0] for k, s in enumerate(scales)]
    shape = _exposure(1, 0, 0, wave)[1]
    night = nightly_transfer(exposures)
    np.testing.assert_allclose(
        night["exposure_scale"] / night["exposure_scale"][0],
        np.array(scales) / scales[0],
        rtol=0.01,
    )
    assert list(night["exposure_used"].values) == [True, True, True, False, True]
    ratio = night["calibration"].values / shape
    assert np.std(ratio[night["calibration_mask"].values == 0]) < 0.01
    assert np.all(np.isfinite(night["calibration"].values))  # masked band interpolated


def test_uncalibrated_exposure_is_an_error():
    with pytest.raises(CalibrationError, match="not flux-calibrated"):
        nightly_transfer([xr.Dataset({"flux": ("wavelength", np.ones(3))})])
    with pytest.raises(CalibrationError, match="no exposure"):
        nightly_transfer([])
