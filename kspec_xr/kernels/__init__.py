"""NumPy/SciPy kernels: no xarray, no dask, no file I/O, no module state.

``resample`` (flux-conserving rebinning, Gaussian LSF), ``rv`` (FFT
cross-correlation), ``photometry`` (synthetic magnitudes, Teff from colors),
``sky`` (nearest neighbours on the sphere), ``air`` (air ↔ vacuum
wavelengths), ``template_fit`` (the per-star
template fit) and ``robust`` (gating and the combination of the standards).  The xarray stages wrap them.
"""
