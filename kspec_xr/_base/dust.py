"""Interstellar extinction: the one extinction law kspec_xr uses, and band ratios.

The law is Gordon et al. (2023, ApJ 950, 86; "G23") at R_V = 3.1, the
Milky-Way average, evaluated by the `dust_extinction
<https://dust-extinction.readthedocs.io>`_ package (valid 912 Å – 32 µm).
:func:`extinction_curve` gives A(λ)/E(B−V) = R_V · A(λ)/A(V) on vacuum
wavelengths; a spectrum behind E(B−V) is the intrinsic one times
``10**(-0.4 * ebv * extinction_curve(wave))``.

:func:`band_ratio` gives A_band/E(B−V) for a catalogue band, for converting a
catalogue's per-band extinction (RefCat2's ``Ag``, Pan-STARRS g; ``AGaia``,
Gaia G) into E(B−V).  The ratio depends a little on the star's spectrum; it
is computed for a 6500 K black body (an F star, the usual flux standard) at
E(B−V) = 0.1, which is within 1 % of the ratio of any F/G star.

*Speed.*  Importing ``dust_extinction`` costs about 0.5 s (it pulls in
``astropy.modeling`` and ``scipy.interpolate``) and a band's curve is read
from speclite's ECSV files, so a new process would spend ~0.6 s on numbers
that never change.  The law is therefore tabulated once on steps of 1e-4 in
ln λ (linear interpolation reproduces G23 to < 2e-7 of its value from 912 Å
to 30 µm) and the band ratios computed once per band.  Both are kept in the
user cache (``dust/``), keyed by the law, the ``dust_extinction`` and
speclite versions and the ratios' method, and verified by a SHA-256 on every
load: a damaged file is recomputed with a warning, one of another key is
recomputed and replaced.  Without a writable cache they are computed in
memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import warnings
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from .bands import filter_curve
from .paths import atomic_output, cache_dir

__all__ = ["LAW", "R_V", "EBV_MAX", "extinction_curve", "law_curve", "band_ratio", "redden"]

#: The extinction law, as recorded in outputs.
LAW = "G23 (Gordon et al. 2023), R_V = 3.1"
R_V = 3.1
#: Upper bound of a fitted E(B−V) (and of a catalogue value taken as real), mag.
EBV_MAX = 0.5


@functools.lru_cache(maxsize=1)
def _model():
    from dust_extinction.parameter_averages import G23  # deferred: imports astropy.units

    return G23(Rv=R_V)


#: the law's range (Å), a little inside G23's 912 Å – 32 µm
_LO, _HI = 912.0 * 1.0001, 3.2e5 * 0.9999
#: step of the tabulated law in ln λ
_STEP = 1e-4


def law_curve(wavelength) -> np.ndarray:
    """A(λ)/E(B−V) evaluated by ``dust_extinction`` itself (slow to import; see the module)."""
    lam = np.asarray(wavelength, dtype=np.float64)
    x = 1e4 / np.clip(lam, _LO, _HI)  # inverse microns
    return R_V * np.asarray(_model().evaluate(x, R_V), dtype=np.float64)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - a broken install
        return "unknown"


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _dust_cache():
    """The cache folder of the tabulated law and band ratios, or None when none can be made."""
    try:
        return cache_dir("dust")
    except OSError:
        return None


def _save(path, write) -> None:
    """Write a cache file atomically; a cache that cannot be written is not an error."""
    with contextlib.suppress(OSError), atomic_output(path) as tmp:
        write(tmp)


def _warn_damaged(path, what: str) -> None:
    warnings.warn(
        f"{path}: {what}; it is recomputed (delete the file if this repeats)",
        RuntimeWarning,
        stacklevel=4,
    )


def _read_law(path, key: str, n: int) -> np.ndarray | None:
    """The verified table in ``path``, or None (absent: quietly; unreadable or wrong: warned)."""
    try:
        with open(path, "rb") as handle:
            stored_digest = handle.read(64).decode("ascii")
            values = np.load(handle, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:
        _warn_damaged(path, f"the tabulated extinction law cannot be read ({exc})")
        return None
    if not (
        isinstance(values, np.ndarray)
        and values.dtype == np.float64
        and values.shape == (n,)
        and stored_digest == _digest(key.encode() + values.tobytes())
    ):
        _warn_damaged(path, "the tabulated extinction law does not verify")
        return None
    values.setflags(write=False)
    return values


@functools.lru_cache(maxsize=1)
def _law_table() -> tuple[float, np.ndarray]:
    """(ln λ of the first node, A/E(B−V) at every node): the law on steps of :data:`_STEP`."""
    lo = np.log(_LO)
    n = int(np.ceil((np.log(_HI) - lo) / _STEP)) + 1
    key = f"{LAW}|dust_extinction {_version('dust_extinction')}|{lo!r}|{_STEP!r}|{n}"
    folder = _dust_cache()
    path = None
    if folder is not None:
        path = folder / f"law-{_digest(key.encode())[:16]}.npy"
        stored = _read_law(path, key, n)
        if stored is not None:
            return float(lo), stored
    values = law_curve(np.exp(lo + _STEP * np.arange(n)))
    if path is not None:

        def write(tmp):
            with open(tmp, "wb") as handle:
                handle.write(_digest(key.encode() + values.tobytes()).encode("ascii"))
                np.save(handle, values, allow_pickle=False)

        _save(path, write)
    values.setflags(write=False)
    return float(lo), values


def extinction_curve(wavelength) -> np.ndarray:
    """A(λ)/E(B−V) at vacuum wavelengths ``wavelength`` (Å), G23 with R_V = 3.1.

    Outside the law's range (912 Å – 32 µm) the curve is held at its end
    values.  From the tabulated law (within 2e-7 of :func:`law_curve`).
    """
    lo, values = _law_table()
    lam = np.clip(np.asarray(wavelength, dtype=np.float64), _LO, _HI)
    position = (np.log(lam) - lo) / _STEP
    index = np.clip(np.floor(position).astype(np.intp), 0, values.size - 2)
    frac = position - index
    return values[index] * (1.0 - frac) + values[index + 1] * frac


def redden(wavelength, flux, ebv) -> np.ndarray:
    """``flux`` behind E(B−V) = ``ebv`` (broadcast over leading axes)."""
    curve = extinction_curve(wavelength)
    return np.asarray(flux) * 10.0 ** (-0.4 * np.asarray(ebv, dtype=float)[..., None] * curve)


class _RatioCache:
    """The band ratios computed so far, in one verified JSON file of the user cache."""

    def __init__(self):
        self.key = f"{LAW}|speclite {_version('speclite')}|{_law_digest()}|{_method_digest()}"
        folder = _dust_cache()
        self.path = None if folder is None else folder / "band-ratios.json"
        self.ratios: dict[str, float] = {}
        if self.path is None:
            return
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            _warn_damaged(self.path, f"the cached band ratios cannot be read ({exc})")
            return
        if isinstance(record, dict) and record.get("key") != self.key:
            return  # another law, version or method: recomputed and replaced
        ratios = record.get("ratios") if isinstance(record, dict) else None
        if not (
            isinstance(ratios, dict)
            and record.get("digest") == self._digest(ratios)
            and all(isinstance(v, float) and np.isfinite(v) for v in ratios.values())
        ):
            _warn_damaged(self.path, "the cached band ratios do not verify")
            return
        self.ratios = dict(ratios)

    def _digest(self, ratios) -> str:
        return _digest(json.dumps([self.key, ratios], sort_keys=True).encode())

    def add(self, band: str, ratio: float) -> None:
        self.ratios[band] = ratio
        if self.path is not None:
            ratios = dict(self.ratios)
            record = {"key": self.key, "ratios": ratios, "digest": self._digest(ratios)}
            _save(self.path, lambda tmp: tmp.write_text(json.dumps(record, sort_keys=True)))


def _law_digest() -> str:
    lo, values = _law_table()
    return _digest(np.float64(lo).tobytes() + values.tobytes())[:16]


def _method_digest() -> str:
    """Digest of how a ratio is computed (its code), so that a changed method recomputes."""
    code = _compute_band_ratio.__code__
    return _digest(code.co_code + repr(code.co_consts).encode())[:16]


@functools.lru_cache(maxsize=1)
def _ratio_cache() -> _RatioCache:
    return _RatioCache()


@functools.lru_cache(maxsize=64)
def band_ratio(band: str) -> float:
    """A_band / E(B−V) of a speclite band for an F star (6500 K black body).

    Computed once per band and law and kept in the user cache (see the module).

    Examples
    --------
    >>> 3.4 < band_ratio("panstarrs-g") < 3.9
    True
    """
    cache = _ratio_cache()
    ratio = cache.ratios.get(band)
    if ratio is None:
        ratio = _compute_band_ratio(band)
        cache.add(band, ratio)
    return ratio


def _compute_band_ratio(band: str) -> float:
    from scipy.integrate import trapezoid

    wave, response = filter_curve(band)
    lam = np.linspace(wave[0], wave[-1], 2000)
    resp = np.interp(lam, wave, response)
    hc_kt = 1.4387769e8 / 6500.0  # hc/kT in Å
    planck = lam**-5 / np.expm1(hc_kt / lam)
    weight = resp * planck * lam  # photon-counting
    ebv = 0.1
    dimmed = trapezoid(weight * 10.0 ** (-0.4 * ebv * extinction_curve(lam)), lam)
    return float(-2.5 * np.log10(dimmed / trapezoid(weight, lam)) / ebv)
