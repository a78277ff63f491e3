"""The template grid prepared for one instrument setup: an object built once and reused.

Preparing a grid for an exposure's wavelength range and resolution is the
expensive, reusable part of the fit (as xESMF's ``Regridder`` builds its
weights once): every template is convolved to the instrument FWHM (less the
grid's own resolution, in quadrature) and rebinned, flux-conservingly, onto a
working grid uniform in ln λ, where a radial velocity is a plain index shift;
their synthetic magnitudes, a binned copy for ranking templates and that
copy's running integrals are computed alongside.  :class:`PreparedTemplates`
holds all of it; :func:`prepare_templates` builds one or takes it from the
cache (disk, and the last two in memory).

A cache entry is trusted only after two checks (see :func:`prepare_templates`):
its ``inputs`` record (grid identity and coordinates, wavelengths, FWHM,
``vmax``, ``oversample``, bands, code and format versions) must equal the
caller's, and every array must match the SHA-256 recorded when it was
written, with ``meta.json`` itself under a digest.  An array once found
intact is not hashed again while its file keeps the stamp (inode, size,
mtime, ctime) recorded then (see :meth:`PreparedTemplates.open`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import xarray as xr

from .._base.bands import COLOR_PAIRS, KNOWN_BANDS, band_range, filter_curve
from .._base.errors import CalibrationError, KspecWarning, TemplateError
from .._base.memory import small_pages
from .._base.paths import atomic_output, cache_dir, waiting_lock
from ..kernels.photometry import band_weights, color_pair_indices, mags_from_weights
from ..kernels.resample import (
    SIGMA_PER_FWHM,
    bin_log_grid,
    bin_pixels,
    cumulative,
    edges_from_centers,
    resample_matrix,
)
from ..kernels.rv import C_KMS
from ..kernels.template_fit import TemplateGrid

log = logging.getLogger(__name__)

__all__ = [
    "PreparedTemplates",
    "prepare_templates",
    "fwhm_at",
    "PREPARE_VERSION",
    "CACHE_FORMAT",
    "CACHE_KEPT",
    "MEMORY_KEPT",
]

#: bump when the prepared product changes, so old cache entries are not reused
PREPARE_VERSION = 5

#: bump when the layout of a saved grid (``meta.json``, its integrity record) changes
CACHE_FORMAT = 2

#: prepared grids kept in a cache folder (the most recently used; ~150 MB each
#: for the 572-template stand-in grid on a 4096-pixel setup)
CACHE_KEPT = 12
#: seconds a process waits for another that prepares the same setup, then prepares it
#: itself (the stand-in grid prepares in ~5 s, a large BOSZ grid in minutes)
PREPARE_WAIT = 900.0

#: prepared grids kept in memory by :func:`prepare_templates` (a night's
#: exposures share one setup, so a batch worker prepares it once)
MEMORY_KEPT = 2

FWHM = float | Sequence[float] | Callable[[np.ndarray], np.ndarray]


def fwhm_at(fwhm: FWHM, wavelength: np.ndarray) -> np.ndarray:
    """Instrument FWHM (Å) at each wavelength.

    ``fwhm`` is a constant (Å), polynomial coefficients in λ (Å, lowest order
    first: ``c0 + c1·λ + c2·λ² …``) or a callable of λ.
    """
    lam = np.asarray(wavelength, dtype=float)
    if callable(fwhm):
        out = np.asarray(fwhm(lam), dtype=float)
    elif np.ndim(fwhm) == 0:
        out = np.full_like(lam, float(np.asarray(fwhm)))
    else:
        out = np.polynomial.polynomial.polyval(lam, np.asarray(fwhm, dtype=float))
    out = np.broadcast_to(out, lam.shape)
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise CalibrationError(
            f"the instrument FWHM must be positive over {lam.min():.0f}-{lam.max():.0f} Å; "
            "give a constant in Å (e.g. fwhm=2.5) or polynomial coefficients in λ"
        )
    return out


def _working_grid(
    wavelength: np.ndarray, fwhm: np.ndarray, *, vmax: float, oversample: int
) -> np.ndarray:
    """Log-uniform grid covering the exposure (plus RV and kernel margins)."""
    lnl = np.log(wavelength)
    dlnl = float(np.min(np.diff(lnl))) / oversample
    margin = vmax / C_KMS + 6 * float(np.max(fwhm / wavelength)) / SIGMA_PER_FWHM
    lo = lnl[0] - margin
    n = int(np.ceil((lnl[-1] + margin - lo) / dlnl)) + 1
    return np.exp(lo + dlnl * np.arange(n))


#: arrays of a prepared grid and their dims
_ARRAYS = {
    "loglam": ("loglam",),
    "flux": ("template", "loglam"),
    "continuum": ("template", "loglam"),
    "loglam_scoring": ("loglam_scoring",),
    "scoring_norm": ("template", "loglam_scoring"),
    "scoring_cumulative": ("template", "loglam_edges"),
    "params": ("template", "param"),
    "alpha": ("template",),
    "mags": ("template", "band"),
}
_PARAMS = ("teff", "logg", "mh")
#: arrays opened as read-only memory maps (only a few rows are read per star: the
#: full-resolution templates of its final model, the scoring rows of its candidates)
_MAPPED = ("flux", "continuum", "scoring_norm", "scoring_cumulative")


class _UnusableGrid(TemplateError):
    """A saved grid that cannot be used; ``problem`` is the message without the advice."""

    def __init__(self, problem: str):
        super().__init__(
            f"{problem}; prepare the grid again (kx.prepare_templates) or delete the folder"
        )
        self.problem = problem


class PreparedTemplates:
    """A template grid prepared for one instrument setup (wavelength grid and FWHM).

    Build it with :func:`prepare_templates` (or :meth:`build`), pass it to
    :func:`kspec_xr.fit_standards` / ``templates=`` for every exposure of the
    setup, keep it as long as you calibrate such exposures: it is the
    expensive reusable operator of the calibration, as xESMF's ``Regridder``
    is of regridding.  :meth:`save` and :meth:`open` store it as a folder of
    ``.npy`` arrays (the templates and their scoring copies opened as memory maps).

    Attributes
    ----------
    bands : tuple of str
        The bands of ``mags`` (every known band the grid covers).
    attrs : dict
        Grid id and source, the FWHM range, the step in ln λ, ``vmax``,
        ``oversample``, the exposure's wavelength range, the cache key.
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, bands, atm, attrs: dict):
        missing = sorted(set(_ARRAYS) - set(arrays))
        if missing:
            raise TemplateError(f"a prepared grid needs the arrays {missing}")
        self._arrays = dict(arrays)
        self.bands = tuple(str(b) for b in bands)
        self.atm = np.asarray(atm, dtype=str)
        self.attrs = dict(attrs)
        self._lock = threading.Lock()
        self._inputs: dict[float, dict] = {}
        #: what :func:`prepare_templates` built it from (its cache key's record), or None
        self._cache_inputs: dict | None = None

    # -- building, saving, opening ------------------------------------------

    @classmethod
    def build(
        cls, grid: xr.DataArray, wavelength, fwhm: FWHM, *, vmax: float = 600.0, oversample: int = 3
    ) -> PreparedTemplates:
        """Prepare ``grid`` for an exposure's wavelengths and FWHM (no cache)."""
        wave = _check_wavelength(wavelength)
        fwhm_pix = fwhm_at(fwhm, wave)
        return _build(grid, wave, fwhm_pix, vmax=vmax, oversample=oversample)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the grid as a folder (``.npy`` arrays and ``meta.json``), atomically.

        The arrays go into a temporary folder beside ``folder`` that is renamed
        into place; an existing ``folder`` is replaced.  ``meta.json`` records
        the SHA-256 of every array and a digest of itself, which :meth:`open`
        checks.

        Raises
        ------
        OSError
            The folder cannot be written (read-only, disk full); nothing is
            left behind.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()
        try:
            arrays = {name: np.asarray(array) for name, array in self._arrays.items()}
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            meta = {
                "prepare_version": PREPARE_VERSION,
                "cache_format": CACHE_FORMAT,
                "bands": list(self.bands),
                "atm": self.atm.tolist(),
                "attrs": self.attrs,
                "shapes": {k: list(np.shape(v)) for k, v in arrays.items()},
                "arrays": {
                    k: {"dtype": v.dtype.str, "sha256": h}
                    for (k, v), h in zip(arrays.items(), _hash_arrays(arrays.values()), strict=True)
                },
                "inputs": self._cache_inputs,
            }
            meta["digest"] = _meta_digest(meta)
            with open(tmp / "meta.json", "w") as fh:
                json.dump(meta, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if folder.exists():  # moved aside first: readers never see it half deleted
                _discard(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def open(cls, folder: str | os.PathLike, *, verify: bool = True) -> PreparedTemplates:
        """A grid written by :meth:`save`.

        Parameters
        ----------
        folder : str or path-like
            The folder :meth:`save` wrote.
        verify : bool, default True
            Check every array against the SHA-256 recorded in ``meta.json``
            (this reads the memory-mapped templates once: about 0.05 s per
            100 MB).  ``meta.json``'s own digest, the shapes and the dtypes
            are always checked.  An array found intact gets a verification
            stamp in ``verified.json`` beside it (its file's device, inode,
            size, mtime and ctime; written atomically, only for a file not
            changed in the last :data:`STAMP_MARGIN_NS`), and is not hashed
            again while its file keeps that stamp: any write to a file --
            by kspec_xr, another program or a copy over it -- gives it a new
            ctime, so tampering and damage done through the file system are
            still found.  Silent bit rot on the disk that leaves the ctime
            alone is not (delete ``verified.json`` to hash everything again).

        Raises
        ------
        TemplateError
            The folder is not a complete, undamaged prepared grid of this
            version (naming the file at fault).
        """
        folder = Path(folder)
        bad = _UnusableGrid
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("prepare_version") != PREPARE_VERSION:
                raise bad(
                    f"{folder} was prepared by another version of kspec_xr "
                    f"({meta.get('prepare_version')}, this one makes {PREPARE_VERSION})"
                )
            if meta.get("cache_format") != CACHE_FORMAT or "digest" not in meta:
                raise bad(
                    f"{folder} has no integrity record of this kspec_xr (format "
                    f"{meta.get('cache_format', 1)}, this one writes {CACHE_FORMAT})"
                )
            if _meta_digest(meta) != meta["digest"]:
                raise bad(f"{folder / 'meta.json'} does not match its digest (edited or damaged)")
            # each file's identity before it is read: what a verification stamp records
            stat_time = time.time_ns()
            before = {name: _file_stamp(folder / f"{name}.npy") for name in _ARRAYS if verify}
            arrays = {}
            for name in _ARRAYS:
                # the templates stay on disk, memory-mapped: a star's candidates and
                # final model read a few rows of them (the cache's files are never
                # changed in place: a new grid is a new folder, renamed into place)
                path = folder / f"{name}.npy"
                try:
                    if name in _MAPPED:
                        array = np.load(path, mmap_mode="r", allow_pickle=False)
                    else:
                        array = np.load(path, allow_pickle=False)
                except (ValueError, EOFError, OSError) as err:
                    why = getattr(err, "strerror", None) or str(err).split(". ")[0]
                    raise bad(f"{path} is not a readable .npy array ({why})") from err
                want = meta["arrays"][name]
                if list(array.shape) != meta["shapes"][name] or array.dtype.str != want["dtype"]:
                    raise bad(
                        f"{path} holds {array.dtype.str}{list(array.shape)} where meta.json "
                        f"records {want['dtype']}{meta['shapes'][name]}"
                    )
                arrays[name] = array
            if verify:
                stamped = _read_stamps(folder, meta)
                check = [
                    name
                    for name in arrays
                    if before[name] is None
                    or stamped.get(name) != before[name]
                    or _file_stamp(folder / f"{name}.npy") != before[name]
                ]
                hashes = _hash_arrays(arrays[name] for name in check)
                for name, digest in zip(check, hashes, strict=True):
                    if digest != meta["arrays"][name]["sha256"]:
                        raise bad(
                            f"{folder / (name + '.npy')} does not match its SHA-256 in "
                            "meta.json (damaged or changed after it was written)"
                        )
                if check:
                    _write_stamps(folder, meta, stamped, before, check, stat_time)
            prepared = cls(arrays, bands=meta["bands"], atm=meta["atm"], attrs=meta["attrs"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as err:
            if isinstance(err, _UnusableGrid):
                raise
            raise bad(
                f"{folder} is not a complete prepared grid ({type(err).__name__}: {err})"
            ) from err
        prepared._cache_inputs = meta.get("inputs")
        return prepared

    # -- what it holds -------------------------------------------------------

    @property
    def n_templates(self) -> int:
        return int(self._arrays["params"].shape[0])

    def __len__(self) -> int:
        return self.n_templates

    def __repr__(self) -> str:
        a = self.attrs
        return (
            f"<PreparedTemplates: {self.n_templates} templates, {len(self.bands)} bands, "
            f"{a.get('exposure_wave_min', 0):.0f}-{a.get('exposure_wave_max', 0):.0f} A at FWHM "
            f"{a.get('fwhm_min', 0):.3g}-{a.get('fwhm_max', 0):.3g} A, grid {a.get('grid_id', '?')}>"
        )

    @property
    def dataset(self) -> xr.Dataset:
        """The grid as an ``xr.Dataset`` (flux, continuum on (template, loglam); mags; params)."""
        a = self._arrays
        units = self.attrs.get("units", "erg/s/cm2/A")
        coords = {
            **{p: ("template", a["params"][:, k]) for k, p in enumerate(_PARAMS)},
            "alpha": ("template", a["alpha"]),
            "atm": ("template", self.atm),
            "loglam": ("loglam", a["loglam"], {"units": "1", "long_name": "ln(wavelength/Å)"}),
            "wavelength": ("loglam", np.exp(a["loglam"]), {"units": "Angstrom"}),
            "loglam_scoring": ("loglam_scoring", a["loglam_scoring"], {"units": "1"}),
            "band": ("band", np.array(self.bands, dtype=str)),
        }
        return xr.Dataset(
            {
                "flux": (("template", "loglam"), a["flux"], {"units": units}),
                "continuum": (("template", "loglam"), a["continuum"], {"units": units}),
                "mags": (("template", "band"), a["mags"], {"units": "mag", "system": "AB"}),
            },
            coords=coords,
            attrs=self.attrs,
        )

    def __getitem__(self, name: str) -> xr.DataArray:
        return self.dataset[name]

    @property
    def sizes(self):
        return self.dataset.sizes

    def isel(self, template) -> PreparedTemplates:
        """A new prepared grid of some of the templates (e.g. a Teff range)."""
        rows = np.arange(self.n_templates)[template]
        arrays = {}
        for name, dims in _ARRAYS.items():
            array = self._arrays[name]
            arrays[name] = np.asarray(array[rows]) if dims[0] == "template" else array
        attrs = {**self.attrs, "cache_key": ""}  # a subset is not the cached grid
        return PreparedTemplates(arrays, bands=self.bands, atm=self.atm[rows], attrs=attrs)

    def check(self, wavelength) -> None:
        """Refuse an exposure whose wavelengths this grid was not prepared for."""
        lo, hi = self.attrs.get("exposure_wave_min"), self.attrs.get("exposure_wave_max")
        wave = np.asarray(wavelength, dtype=float)
        if lo is not None and hi is not None and (wave[0] < lo - 1e-6 or wave[-1] > hi + 1e-6):
            raise CalibrationError(
                f"the prepared templates cover {lo:.0f}-{hi:.0f} Å but the exposure spans "
                f"{wave[0]:.0f}-{wave[-1]:.0f} Å; prepare them for this exposure's grid "
                "(its vacuum wavelengths, kx.vacuum_wavelength(ds), for a file in air)"
            )

    # -- what the fit kernel gets ---------------------------------------------

    def kernel_inputs(self, alpha: float = 0.0) -> dict:
        """The arrays the template fit needs, for the templates of one [α/M] (cached).

        Returns
        -------
        dict
            ``arrays``: DataArrays to pass positionally to
            :func:`kspec_xr.kernels.template_fit.fit_block` (the full-resolution
            ``template_flux``/``template_continuum`` of every template, with
            ``rows`` into them); ``pairs``, ``oversample``: its
            small keyword arguments; ``keep``: the template indices used;
            ``alpha``: the [α/M] chosen (the grid's nearest).
        """
        key = float(alpha)
        with self._lock:
            if key not in self._inputs:
                self._inputs[key] = self._make_inputs(key)
            return self._inputs[key]

    def kernel_grid(self, alpha: float = 0.0) -> TemplateGrid:
        """The :class:`~kspec_xr.kernels.template_fit.TemplateGrid` the fit builds from
        :meth:`kernel_inputs` (for scripts that call the kernels themselves)."""
        inputs = self.kernel_inputs(alpha)
        a = {k: v.values for k, v in inputs["arrays"].items()}
        keep = inputs["keep"]
        scoring = TemplateGrid(
            a["scoring_loglam"],
            bin_pixels(np.asarray(self._arrays["flux"][keep]), inputs["oversample"]),
            bin_pixels(np.asarray(self._arrays["continuum"][keep]), inputs["oversample"]),
            a["params"], a["template_mags"], inputs["pairs"],
            norm=a["scoring_norm"], cumulative=a["scoring_cumulative"],
        )  # fmt: skip
        return TemplateGrid(
            a["loglam"], a["template_flux"], a["template_continuum"], a["params"],
            a["template_mags"], inputs["pairs"], inputs["oversample"], rows=a["rows"],
            scoring=scoring,
        )  # fmt: skip

    def _make_inputs(self, alpha: float) -> dict:
        a = self._arrays
        alphas = np.asarray(a["alpha"], dtype=float)
        chosen = alphas[np.argmin(np.abs(alphas - alpha))]
        keep = np.flatnonzero(alphas == chosen)
        every = keep.size == alphas.size

        def rows_of(name):
            return a[name] if every else np.asarray(a[name][keep])

        arrays = {
            "loglam": xr.DataArray(a["loglam"], dims="loglam"),
            "template_flux": xr.DataArray(a["flux"], dims=("grid_row", "loglam")),
            "template_continuum": xr.DataArray(a["continuum"], dims=("grid_row", "loglam")),
            "rows": xr.DataArray(keep, dims="template"),
            "params": xr.DataArray(rows_of("params"), dims=("template", "param")),
            "template_mags": xr.DataArray(rows_of("mags"), dims=("template", "band_grid")),
            "scoring_loglam": xr.DataArray(a["loglam_scoring"], dims="loglam_scoring"),
            "scoring_norm": xr.DataArray(
                rows_of("scoring_norm"), dims=("template", "loglam_scoring")
            ),
            "scoring_cumulative": xr.DataArray(
                rows_of("scoring_cumulative"), dims=("template", "loglam_edges")
            ),
        }
        return {
            "arrays": arrays,
            "pairs": color_pair_indices(self.bands, COLOR_PAIRS),
            "oversample": int(self.attrs.get("oversample", 1)),
            "keep": keep,
            "alpha": float(chosen),
        }


def _check_wavelength(wavelength) -> np.ndarray:
    if isinstance(wavelength, xr.DataArray):
        if wavelength.ndim != 1:
            raise ValueError(
                "prepare_templates needs the exposure's common 1-D wavelength grid; this "
                "exposure has a wavelength per fiber — resample it onto one grid first"
            )
        wavelength = wavelength.values
    wave = np.asarray(wavelength, dtype=float)
    if wave.ndim != 1 or wave.size < 2 or np.any(np.diff(wave) <= 0):
        raise ValueError("wavelength must be a strictly increasing 1-D grid (Å)")
    return wave


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    try:
        return version("kspec_xr")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _hash_floats(values) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


def _hash_array(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (a memory map is read once)."""
    a = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    digest.update(a.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _hash_arrays(arrays) -> list[str]:
    """:func:`_hash_array` of each, two at a time (hashlib releases the GIL)."""
    arrays = list(arrays)
    if not arrays:
        return []
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_hash_array, arrays))


#: the verification stamps of a saved grid's arrays, beside them (see :meth:`PreparedTemplates.open`)
STAMPS_FILE = "verified.json"

#: a file whose ctime is less than this before it was looked at is not stamped: file
#: systems keep times at a coarse tick, so a write in the same tick as the last one
#: could leave the ctime unchanged
STAMP_MARGIN_NS = 2_000_000_000


def _file_stamp(path: Path) -> list[int] | None:
    """What any write to a file changes: device, inode, size, mtime and ctime (ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_stamps(folder: Path, meta: dict) -> dict[str, list[int]]:
    """Array name -> the stamp of its file when it last matched ``meta``'s SHA-256.

    Only stamps made for this ``meta.json`` (its digest) and for each array's
    recorded SHA-256 count; an unreadable or foreign file gives none.
    """
    try:
        record = json.loads((folder / STAMPS_FILE).read_text())
        if record.get("digest") != meta["digest"]:
            return {}
        return {
            name: entry["stamp"]
            for name, entry in record["arrays"].items()
            if name in meta["arrays"] and entry.get("sha256") == meta["arrays"][name]["sha256"]
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_stamps(folder: Path, meta: dict, stamped: dict, before: dict, hashed, stat_time: int):
    """Record the stamps of the arrays just hashed (and found intact), atomically.

    A file is stamped only if it did not change while it was read and hashed
    and its ctime is at least :data:`STAMP_MARGIN_NS` older than the moment it
    was looked at (so any later write gives it a new ctime); a folder that
    cannot be written keeps its old stamps (the next open hashes again).
    """
    stamps = {name: stamp for name, stamp in stamped.items() if name not in hashed}
    for name in hashed:
        stamp = before[name]
        if (
            stamp is not None
            and stamp[4] < stat_time - STAMP_MARGIN_NS
            and _file_stamp(folder / f"{name}.npy") == stamp
        ):
            stamps[name] = stamp
    if stamps == stamped:
        return
    record = {
        "digest": meta["digest"],
        "arrays": {
            name: {"sha256": meta["arrays"][name]["sha256"], "stamp": stamp}
            for name, stamp in stamps.items()
        },
    }
    with contextlib.suppress(OSError), atomic_output(folder / STAMPS_FILE) as tmp:
        tmp.write_text(json.dumps(record))


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _grid_coords_hash(grid: xr.DataArray) -> str:
    """Hash of the grid's dims and in-memory coordinates: tells a subset (``sel``) from the grid."""
    digest = hashlib.sha256(json.dumps([list(grid.dims), list(grid.shape)]).encode())
    for name in sorted(str(n) for n in grid.coords):
        coord = grid.coords[name]
        if coord.chunks is not None:  # the lazy continuum: covered by grid_id
            continue
        values = np.ascontiguousarray(coord.values)
        if values.dtype.kind == "O":
            values = values.astype(str)
        digest.update(f"{name}{coord.dims}{values.dtype.str}{values.shape}".encode())
        digest.update(values.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _source_stamp(grid: xr.DataArray) -> list | None:
    """Size and mtime of a packed cube (its ``grid_id`` names its source, not the cube file)."""
    source = grid.attrs.get("source")
    if not source:
        return None
    try:
        st = os.stat(source)
    except (OSError, TypeError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns] if os.path.isfile(source) else None


def _cache_inputs(grid: xr.DataArray, wavelength, fwhm, vmax, oversample) -> dict:
    """Everything a prepared grid is made from: the record its cache key hashes."""
    grid_id = grid.attrs.get("grid_id")
    if not grid_id:
        raise TemplateError(
            "the template grid has no 'grid_id' attribute, so its prepared form cannot be "
            "cached; open it with kx.open_bosz(...) or set grid.attrs['grid_id'] to a "
            "string that identifies its content, or pass cache=False"
        )
    wave = np.asarray(wavelength, dtype=float)
    return {
        "cache_format": CACHE_FORMAT,
        "prepare_version": PREPARE_VERSION,
        "kspec_xr": _code_version(),
        # grid_id hashes the grid's file names, sizes and mtimes (bosz._grid_id)
        "grid_id": str(grid_id),
        "grid_file": _source_stamp(grid),
        "grid_coords": _grid_coords_hash(grid),
        # the bands are part of the key: a grid prepared before a band was known lacks its mags
        "bands": list(KNOWN_BANDS),
        "vmax": float(vmax),
        "oversample": int(oversample),
        "n_wavelength": int(wave.size),
        "wavelength_range": [float(wave[0]), float(wave[-1])],
        "wavelength": _hash_floats(wave),
        "fwhm": _hash_floats(fwhm),
    }


def _cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def _stack_templates(grid: xr.DataArray) -> xr.DataArray:
    """(teff, logg, mh, alpha, wavelength) → (template, wavelength), holes dropped."""
    if "wavelength" not in grid.dims:
        raise TemplateError(f"the template grid has no 'wavelength' dimension (dims {grid.dims})")
    params = [d for d in grid.dims if d != "wavelength"]
    if params == ["template"]:
        stacked = grid
    else:
        stacked = grid.stack(template=params).transpose("template", "wavelength")
        stacked = stacked.drop_vars(["template", *params]).assign_coords(
            {p: ("template", stacked[p].values) for p in params}
        )
    if "filename" in stacked.coords:  # holes are known from the index, no read needed
        present = np.asarray(stacked["filename"].values != "")
        stacked = stacked.isel(template=np.flatnonzero(present))
    return stacked


#: templates transposed and convolved at a time by :func:`_apply_to_rows`
_ROWS_AT_ONCE = 64


def _apply_to_rows(matrix, rows: np.ndarray) -> np.ndarray:
    """(T, L) float32: ``matrix`` (L, N sparse) applied to each row of ``rows`` (T, N).

    ``matrix @ rows.T`` as scipy computes it first copies ``rows.T`` into C order,
    a transpose of the whole (T, N) array whose strided reads cost ~1 s per
    array for a 572-template grid, more than the product; done in blocks of
    :data:`_ROWS_AT_ONCE` templates the copies stay in the cache (the same
    numbers, 10× faster).
    """
    out = np.empty((rows.shape[0], matrix.shape[0]), dtype=np.float32)
    for first in range(0, rows.shape[0], _ROWS_AT_ONCE):
        block = np.ascontiguousarray(rows[first : first + _ROWS_AT_ONCE].T)
        out[first : first + _ROWS_AT_ONCE] = np.asarray(matrix @ block).T
    return out


def _compute_pair(stacked: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    import dask  # deferred: only preparing a grid computes a dask graph here

    flux, cont = dask.compute(stacked.data, stacked["continuum"].data)
    return np.asarray(flux, dtype=float), np.asarray(cont, dtype=float)


def _read_templates(stacked: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Flux and continuum of every template (read-only), read once for consecutive setups.

    An exposure prepares its grid for two setups in a row (the fit's FWHM, then
    the sharp one that measures the resolution; more when the FWHM is
    measured): the read of the first is kept :data:`READ_KEPT_SECONDS` for the
    next, instead of reading every file again.  Kept by the dask names of the
    two arrays, which identify what they compute (for a BOSZ folder, the
    files' names, sizes and mtimes and the selection); a grid held in memory
    (no dask) is not kept.
    """
    import dask  # deferred, as in _compute_pair

    flux, cont = stacked.data, stacked["continuum"].data
    if not (dask.is_dask_collection(flux) and dask.is_dask_collection(cont)):
        return _compute_pair(stacked)
    key = (flux.name, cont.name)
    hit = _RECENT_READ.get(key)
    if hit is not None:
        return hit
    pair = _compute_pair(stacked)
    for array in pair:
        array.flags.writeable = False
    _RECENT_READ.put(key, pair)
    return pair


#: seconds the last template grid read for preparing stays in memory for the next setup
READ_KEPT_SECONDS = 30.0


class _RecentRead:
    """One read grid, dropped :data:`READ_KEPT_SECONDS` after its last use (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._value: tuple[np.ndarray, np.ndarray] | None = None
        self._timer: threading.Timer | None = None
        self._uses = 0  # a timer drops the grid only if no use came after it was set

    def get(self, key: tuple):
        with self._lock:
            if key != self._key:
                return None
            self._restart()
            return self._value

    def put(self, key: tuple, value: tuple[np.ndarray, np.ndarray]) -> None:
        with self._lock:
            self._key, self._value = key, value
            self._restart()

    def clear(self, uses: int | None = None) -> None:
        with self._lock:
            if uses is None or uses == self._uses:
                self._key = self._value = None

    def _restart(self) -> None:
        self._uses += 1
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(READ_KEPT_SECONDS, self.clear, args=(self._uses,))
        self._timer.daemon = True
        self._timer.start()


_RECENT_READ = _RecentRead()


def _covers(native: np.ndarray, band: str) -> bool:
    lo, hi = band_range(band)
    return native[0] <= lo and hi <= native[-1]


def _build(grid: xr.DataArray, wavelength: np.ndarray, fwhm: np.ndarray, *, vmax, oversample):
    with small_pages():  # hundreds of MB of fresh arrays (see kspec_xr._base.memory)
        return _build_arrays(grid, wavelength, fwhm, vmax=vmax, oversample=oversample)


def _build_arrays(
    grid: xr.DataArray, wavelength: np.ndarray, fwhm: np.ndarray, *, vmax, oversample
):
    if "continuum" not in grid.coords:
        raise TemplateError(
            "the template grid has no 'continuum' coordinate; open it with kx.open_bosz "
            "(BOSZ files carry the continuum as their last column)"
        )
    stacked = _stack_templates(grid)
    native = np.asarray(stacked["wavelength"].values, dtype=float)
    resolution = float(stacked.attrs.get("resolution", np.inf))
    work = _working_grid(wavelength, fwhm, vmax=vmax, oversample=oversample)

    fwhm_work = np.interp(work, wavelength, fwhm)  # per-pixel FWHM, held flat beyond the ends
    native_fwhm = work / resolution
    too_sharp = fwhm_work <= native_fwhm
    if np.any(too_sharp):
        raise TemplateError(
            f"the instrument FWHM ({fwhm_work[too_sharp].min():.3g} Å) is not broader than "
            f"the template grid's own resolution (R={resolution:g}); use a grid of higher R"
        )
    sigma = np.sqrt(fwhm_work**2 - native_fwhm**2) / SIGMA_PER_FWHM

    src_edges = edges_from_centers(native)
    dst_edges = edges_from_centers(work)
    try:
        matrix = resample_matrix(src_edges, dst_edges, sigma)
    except ValueError as err:
        raise TemplateError(
            f"the template grid ({native[0]:.0f}-{native[-1]:.0f} Å) does not cover the "
            f"exposure with its velocity and smoothing margins: {err}; open the grid with a "
            "wider wave_range"
        ) from None

    # One parallel read of every file (flux and continuum from the same read), or the
    # read of the previous setup's preparation
    flux, continuum = _read_templates(stacked)
    bad = ~np.all(np.isfinite(flux), axis=1)
    if np.any(bad):
        keep = np.flatnonzero(~bad)
        stacked, flux, continuum = stacked.isel(template=keep), flux[keep], continuum[keep]
    if flux.shape[0] == 0:
        raise TemplateError("the template grid holds no complete spectrum")

    # every known band the grid covers (speclite curves; see _base.bands.KNOWN_BANDS)
    bands = [b for b in KNOWN_BANDS if _covers(native, b)]
    if bands:
        weights = band_weights(native, [filter_curve(b) for b in bands], bands)
        mags = mags_from_weights(flux[:, weights.start : weights.stop], weights.matrix)
    else:
        mags = np.empty((flux.shape[0], 0))

    conv_flux = _apply_to_rows(matrix, flux)
    conv_cont = _apply_to_rows(matrix, continuum)

    # binned from the stored float32 arrays, exactly as kernel_grid bins them
    scoring_flux = bin_pixels(conv_flux, oversample)
    scoring_cont = bin_pixels(conv_cont, oversample)
    loglam = np.log(work)
    scoring_loglam = bin_log_grid(loglam, oversample)
    scoring_norm = scoring_flux / scoring_cont
    scoring_cum = cumulative(scoring_norm, edges_from_centers(np.exp(scoring_loglam)))
    n = flux.shape[0]
    params = np.stack(
        [np.asarray(stacked[p].values, dtype=float) if p in stacked.coords else np.zeros(n)
         for p in _PARAMS],
        axis=1,
    )  # fmt: skip
    alpha = (
        np.asarray(stacked["alpha"].values, dtype=float)
        if "alpha" in stacked.coords
        else np.zeros(n)
    )
    atm = (
        np.asarray(stacked["atm"].values, dtype=str) if "atm" in stacked.coords else np.full(n, "")
    )
    arrays = {
        "loglam": loglam,
        "flux": conv_flux,
        "continuum": conv_cont,
        "loglam_scoring": scoring_loglam,
        "scoring_norm": scoring_norm,
        "scoring_cumulative": scoring_cum,
        "params": params,
        "alpha": alpha,
        "mags": mags,
    }
    attrs = {
        "units": str(stacked.attrs.get("units", "erg/s/cm2/A")),
        "grid_id": str(grid.attrs.get("grid_id", "")),
        "grid_source": str(grid.attrs.get("source", "")),
        "grid_resolution": float(grid.attrs.get("resolution", np.nan)),
        "fwhm_min": float(fwhm.min()),
        "fwhm_max": float(fwhm.max()),
        "dlnl": float(loglam[1] - loglam[0]),
        "vmax": float(vmax),
        "oversample": int(oversample),
        "exposure_wave_min": float(wavelength[0]),
        "exposure_wave_max": float(wavelength[-1]),
        "prepare_version": PREPARE_VERSION,
        "cache_key": "",
    }
    return PreparedTemplates(arrays, bands=bands, atm=atm, attrs=attrs)


def prepare_templates(
    grid: xr.DataArray,
    wavelength,
    fwhm: FWHM,
    *,
    vmax: float = 600.0,
    oversample: int = 3,
    cache: bool | str | os.PathLike = True,
) -> PreparedTemplates:
    """Convolve, rebin and describe every template for one instrument setup.

    Parameters
    ----------
    grid : xr.DataArray
        Template grid from :func:`kspec_xr.open_bosz` (dims ``teff, logg, mh,
        alpha, wavelength`` or ``template, wavelength``, with a ``continuum``
        coordinate and ``resolution`` / ``grid_id`` attributes).
    wavelength : array-like or xr.DataArray
        The exposure's common wavelength grid (Å, increasing, 1-D), in
        vacuum like the templates: ``kx.vacuum_wavelength(ds)`` (what
        :func:`kspec_xr.fit_standards` uses; the same as ``ds.wavelength``
        for a vacuum file).
    fwhm : float, sequence of float or callable
        Instrument FWHM in Å: a constant, polynomial coefficients in λ
        (lowest order first) or a function of λ.
    vmax : float
        Largest |radial velocity| (km/s) the working grid must allow for.
    oversample : int
        Working-grid pixels per exposure pixel at the exposure's finest
        sampling in ln λ.
    cache : bool or path
        ``True``: use the user cache folder; a path: use that folder;
        ``False``: always rebuild and never write.  A cached grid is a folder
        ``prepared-<key>`` of ``.npy`` arrays and ``meta.json``, keyed by
        the grid's identity (``grid_id``: its files' names, sizes and
        mtimes; a packed cube's own size and mtime; its coordinates), the
        bands, the exposure's wavelengths, the FWHM, ``vmax``,
        ``oversample`` and the kspec_xr and cache-format versions; the 12
        most recently used are kept.  The last two grids used are also kept
        in memory (one small cache with a lock, :data:`MEMORY_KEPT`), so a
        batch worker prepares a setup once.

    Returns
    -------
    PreparedTemplates
        The grid at the instrument resolution on a working grid uniform in
        ln λ, with the templates' synthetic magnitudes; pass it to
        :func:`kspec_xr.fit_standards` (or ``templates=``) for every exposure
        of this setup.  ``prepared.dataset`` shows it as an ``xr.Dataset``.

    Raises
    ------
    TemplateError
        The grid does not cover the exposure (with margins), is sharper than
        the instrument, or lacks a continuum or an identity for the cache.

    Warns
    -----
    KspecWarning
        A cache entry that is damaged, unreadable, of another format or made
        from other inputs (e.g. a copy of another setup's entry): it is
        deleted and the grid prepared again, never used.  A cache that
        cannot be written (read-only folder, disk full): the grid is used
        without being cached (kept in memory for this process).

    Notes
    -----
    An entry is used only if its recorded inputs equal this call's and
    every array matches the SHA-256 recorded when it was written (with a
    digest over ``meta.json``); checking costs a read of the entry (~0.05 s
    per 100 MB), small next to preparing it (seconds), and only until the
    arrays carry verification stamps (:meth:`PreparedTemplates.open`):
    then a file is hashed again only when a write has changed it.

    Smoothing kernel: Gaussian with σ(λ) = sqrt(FWHM_inst(λ)² − (λ/R_grid)²)
    / 2.3548, integrated exactly over source and target bins
    (:func:`kspec_xr.resample.resample_matrix`); one sparse operator is
    applied to all templates at once.

    Examples
    --------
    >>> grid = kx.open_bosz()                                   # doctest: +SKIP
    >>> prep = kx.prepare_templates(grid, ds.wavelength, 2.5)   # doctest: +SKIP
    """
    wave = _check_wavelength(wavelength)
    fwhm_pix = fwhm_at(fwhm, wave)
    if cache is False:
        return _build(grid, wave, fwhm_pix, vmax=vmax, oversample=oversample)
    inputs = _cache_inputs(grid, wave, fwhm_pix, vmax, oversample)
    key = _cache_key(inputs)
    folder: Path | None
    reason: str | None
    try:
        folder = cache_dir("prepared") if cache is True else Path(cache)
    except OSError as err:  # e.g. a read-only home: no cache folder can be made
        folder = None
        path = Path(f"prepared-{key}")
        reason = f"cannot make the prepared-grid cache folder ({err})"
    else:
        path = folder / f"prepared-{key}"
        reason = None
    hit = _MEMORY.get(path)
    if hit is not None:
        return hit
    # one process (or thread) prepares a setup; the others wait, then load its entry
    lock = (
        waiting_lock(
            folder / f".prepared-{key}.lock",
            timeout=PREPARE_WAIT,
            on_wait=lambda: log.info("another process is preparing this template grid; waiting"),
        )
        if folder is not None
        else contextlib.nullcontext(False)
    )
    with lock:
        if folder is not None and path.exists():
            try:
                prepared = _open_entry(path, inputs)
            except _UnusableGrid as err:  # a damaged or foreign entry is rebuilt, never trusted
                _warn(
                    f"not using a cached prepared grid: {err.problem}; deleting it and preparing again"
                )
                _discard(path)
            else:
                with contextlib.suppress(OSError):
                    os.utime(path / "meta.json")  # "recently used", for _prune
                return _MEMORY.put(path, prepared)
        lo, hi = float(fwhm_pix.min()), float(fwhm_pix.max())
        log.info(
            "preparing the template grid for FWHM %s (once for this setup: it is cached)",
            f"{lo:.3g} Å" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}-{hi:.3g} Å",
        )
        prepared = _build(grid, wave, fwhm_pix, vmax=vmax, oversample=oversample)
        prepared.attrs["cache_key"] = path.name
        prepared._cache_inputs = json.loads(json.dumps(inputs))
        if folder is not None:
            try:
                prepared.save(path)
            except OSError as err:
                reason = f"cannot write the prepared-grid cache entry {path} ({err})"
                with contextlib.suppress(TemplateError):  # another process wrote it meanwhile?
                    return _MEMORY.put(path, _open_entry(path, inputs))
            else:
                with contextlib.suppress(OSError):
                    _prune(path.parent, keep=CACHE_KEPT)
                try:
                    return _MEMORY.put(path, PreparedTemplates.open(path))
                except TemplateError as err:  # pragma: no cover - damaged as it was written
                    reason = str(err)
        _warn(
            f"{reason}; using the prepared grid without the cache (set KSPEC_XR_CACHE or "
            "cache= to a writable folder, or pass cache=False to silence this)"
        )
        return _MEMORY.put(path, prepared, built=True)


def _warn(message: str) -> None:
    # stacklevel 3: the caller of prepare_templates
    warnings.warn(f"kspec_xr: {message}", KspecWarning, stacklevel=3)


def _open_entry(path: Path, inputs: dict) -> PreparedTemplates:
    """The verified cache entry at ``path``, if it was made from ``inputs``."""
    prepared = PreparedTemplates.open(path)
    stored = prepared._cache_inputs
    expected = json.loads(json.dumps(inputs))
    if stored != expected:
        differ = sorted(
            k for k in {*expected, *(stored or {})} if (stored or {}).get(k) != expected.get(k)
        )
        raise _UnusableGrid(
            f"{path} was prepared from other inputs (differing in {', '.join(differ)}): it is "
            "not this grid and setup's cache entry (copied or renamed?)"
        )
    return prepared


def _discard(path: Path) -> None:
    """Remove a cache folder: renamed aside first, so no reader sees it half deleted."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def _prune(folder: Path, *, keep: int) -> None:
    """Delete all but the ``keep`` most recently used prepared grids in ``folder``.

    Grids of other ``PREPARE_VERSION`` s or :data:`CACHE_FORMAT` s (and the
    ``prepared-*.nc`` files of the first versions) go too: no key of this
    version can reach them; so do the lock files of entries that are gone.
    """
    for stale in folder.glob("prepared-*.nc"):
        stale.unlink(missing_ok=True)
    entries = []
    for entry in folder.glob("prepared-*"):
        try:
            meta = json.loads((entry / "meta.json").read_text())
            used = (entry / "meta.json").stat().st_mtime
            current = (meta.get("prepare_version"), meta.get("cache_format")) == (
                PREPARE_VERSION,
                CACHE_FORMAT,
            )
        except FileNotFoundError:
            continue  # not a prepared grid, or removed by another process meanwhile
        except (OSError, ValueError, AttributeError):
            current = False
        if current:
            entries.append((used, entry))
        else:
            shutil.rmtree(entry, ignore_errors=True)
    entries.sort(reverse=True)
    for _, old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    # the preparers' lock files of entries gone, untouched for a day (a holder refreshes it)
    for lock in folder.glob(".prepared-*.lock"):
        with contextlib.suppress(OSError):
            entry = folder / lock.name[1:].removesuffix(".lock")
            if not entry.exists() and time.time() - lock.stat().st_mtime > 86400.0:
                lock.unlink()


class _MemoryCache:
    """The last few prepared grids this process used, by cache folder (thread-safe).

    An entry opened from disk is valid while every file of its folder keeps
    the inode, size, mtime and ctime it had when it was opened (``meta.json``:
    inode and size; :func:`prepare_templates` touches its mtime;
    :data:`STAMPS_FILE` aside, which says nothing of the grid): a replaced,
    damaged or removed folder is opened (and verified) again.  A grid that
    could not be written to the cache (``built=True``) stays valid: it is the
    one this process built.
    """

    def __init__(self, kept: int):
        self._kept = kept
        self._lock = threading.Lock()
        self._entries: OrderedDict[Path, tuple[tuple | None, PreparedTemplates]] = OrderedDict()

    @staticmethod
    def _stamp(path: Path) -> tuple | None:
        try:
            stamp: list[tuple] = []
            for f in sorted(path.iterdir()):
                if f.name.startswith((STAMPS_FILE, f".{STAMPS_FILE}.")):
                    continue  # the verification stamps (and their temporary files)
                st = f.stat()
                if f.name == "meta.json":
                    stamp.append((f.name, st.st_ino, st.st_size))
                else:
                    stamp.append((f.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            return tuple(stamp)
        except OSError:
            return None

    def get(self, path: Path) -> PreparedTemplates | None:
        with self._lock:
            entry = self._entries.get(path)
        if entry is None:
            return None
        if entry[0] is not None and self._stamp(path) != entry[0]:
            return None
        with self._lock:
            if path in self._entries:
                self._entries.move_to_end(path)
        return entry[1]

    def put(self, path: Path, prepared: PreparedTemplates, *, built: bool = False):
        stamp = None if built else self._stamp(path)
        with self._lock:
            if built or stamp is not None:
                self._entries[path] = (stamp, prepared)
                self._entries.move_to_end(path)
            while len(self._entries) > self._kept:
                self._entries.popitem(last=False)
        return prepared


#: the one in-memory cache of prepared grids (see :data:`MEMORY_KEPT`)
_MEMORY = _MemoryCache(MEMORY_KEPT)
