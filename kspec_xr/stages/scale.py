"""The absolute level of each standard's model: scaled to its catalogue photometry."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .._base.provenance import add_history
from .._base.schema import StandardStatus, stage, with_status

__all__ = ["scale_to_photometry", "MAG_ERROR_FLOOR"]

#: smallest photometric error used in the weights (mag): zero-point and
#: bandpass uncertainties of the catalogue bands
MAG_ERROR_FLOOR = 0.01

_LN10_04 = 0.4 * np.log(10.0)


@stage
def scale_to_photometry(ds: xr.Dataset, /, *, error_floor: float = MAG_ERROR_FLOOR) -> xr.Dataset:
    """Scale each star's model to its catalogue photometry.

    Parameters
    ----------
    ds : xr.Dataset
        Output of :func:`kspec_xr.fit_standards` (``model_mag``, ``std_mag``,
        ``std_mag_err``).
    error_floor : float
        Added in quadrature to every catalogue error (mag).

    Returns
    -------
    xr.Dataset
        Adds ``scale`` and ``scale_err`` (standard), ``phot_residual``
        (standard, band: m_obs − m_syn − Δ̄) and ``phot_nbands``.

    Notes
    -----
    ``Δ̄ = Σ w_b (m_obs,b − m_syn,b) / Σ w_b`` with ``w_b = 1/σ_b²``;
    ``scale = 10**(−0.4·Δ̄)``, ``σ_scale = scale · 0.4 ln10 · σ_Δ̄`` with
    ``σ_Δ̄ = max(1/√Σw, rms of the residuals/√(n−1))`` so that photometry
    that disagrees with the model beyond its errors widens the error.
    """
    delta = ds["std_mag"] - ds["model_mag"]
    err2 = ds["std_mag_err"] ** 2 + error_floor**2
    w = (1.0 / err2).where(np.isfinite(delta))
    n = w.notnull().sum("band")
    wsum = w.sum("band")
    mean = (w * delta).sum("band") / wsum
    resid = delta - mean
    formal = 1.0 / np.sqrt(wsum)
    scatter = np.sqrt((w * resid**2).sum("band") / wsum / np.maximum(n - 1, 1))
    sigma = xr.where(n > 1, np.maximum(formal, scatter), formal)
    scale = (10 ** (-0.4 * mean)).where(n > 0)
    out = ds.assign(
        scale=scale.assign_attrs(
            units="1", long_name="model-to-photometry scale (dilution factor)"
        ),
        scale_err=(scale * _LN10_04 * sigma).assign_attrs(units="1"),
        phot_residual=resid.assign_attrs(units="mag", long_name="m_obs - m_syn - mean offset"),
        phot_nbands=n.astype("int16").assign_attrs(units="1"),
    )
    status = ds["standard_status"]
    no_scale = (status == StandardStatus.OK) & ~np.isfinite(scale)
    out = with_status(out, xr.where(no_scale, int(StandardStatus.NO_SCALE), status))
    return add_history(out, "scale_to_photometry: weighted mean offset over the catalogue bands")
