"""The BOSZ 2024 file-name scheme, shared by the reader and the stand-in writer.

BOSZ 2024 (Mészáros et al. 2024, A&A 688, A197) names one gzip text file per
model for its parameters::

    bosz2024_{atm}_t{Teff}_g{logg:+.1f}_m{[M/H]:+.2f}_a{[α/M]:+.2f}_c{[C/M]:+.2f}_v{vturb}_r{R}_{resam|noresam}.txt.gz

in the folders ``r{R}/m{[M/H]:+.2f}/`` of the archive, with the shared
wavelength grid of each R in ``wavelength_grids/bosz2024_wave_r{R}.txt``.
"""

from __future__ import annotations

import numbers
import os
import re

from .._base.errors import TemplateError

__all__ = [
    "PARAM_DIMS",
    "STANDIN_MARKER",
    "parse_bosz_name",
    "bosz_name",
    "bosz_atmosphere",
    "bosz_folder",
    "wave_grid_name",
]

#: Parameter dimensions of the grid, in order; ``wavelength`` follows them.
PARAM_DIMS = ("teff", "logg", "mh", "alpha")
#: file that marks a folder as kspec_xr's stand-in grid
STANDIN_MARKER = "README_standin.txt"
_MARCS = ("mp", "ms")
_ATLAS = ("ap",)

_NAME_RE = re.compile(
    r"bosz2024_(?P<atm>[a-z]+)_t(?P<teff>\d+)_g(?P<logg>[+-]\d+\.\d)"
    r"_m(?P<mh>[+-]\d+\.\d\d)_a(?P<alpha>[+-]\d+\.\d\d)_c(?P<carbon>[+-]\d+\.\d\d)"
    r"_v(?P<vturb>\d+)_r(?P<resolution>\d+|orig)_(?P<kind>resam|noresam)\.txt(?:\.gz)?"
)
_WAVE_RE = re.compile(r"bosz2024_wave_r(?P<resolution>\d+)\.txt(?:\.gz)?")
_NAME_FORM = (
    "bosz2024_{atm}_t{Teff}_g{logg:+.1f}_m{[M/H]:+.2f}_a{[a/M]:+.2f}_c{[C/M]:+.2f}"
    "_v{vturb}_r{R}_{resam|noresam}.txt.gz"
)


# ---------------------------------------------------------------------------
# file names
# ---------------------------------------------------------------------------


def parse_bosz_name(name) -> dict:
    """Parameters of a BOSZ 2024 spectrum from its file name.

    Parameters
    ----------
    name : str or path-like
        A file name or path; only the last component is used.

    Returns
    -------
    dict
        ``atm`` (str: ``ap`` ATLAS9, ``mp``/``ms`` MARCS plane-parallel/spherical),
        ``teff`` (int, K), ``logg``, ``mh``, ``alpha``, ``carbon`` (float, dex;
        ``-0.00`` reads as ``0.0``), ``vturb`` (int, km/s), ``resolution``
        (int R, or ``"orig"``) and ``resampled`` (bool: ``resam`` vs ``noresam``).

    Raises
    ------
    TemplateError
        If the name is not a BOSZ 2024 spectrum name.

    Examples
    --------
    >>> parse_bosz_name("bosz2024_mp_t5750_g+4.5_m-0.50_a+0.00_c+0.00_v2_r10000_resam.txt.gz")["mh"]
    -0.5
    """
    base = os.path.basename(os.fspath(name))
    match = _NAME_RE.fullmatch(base)
    if match is None:
        raise TemplateError(
            f"{base!r} is not a BOSZ 2024 spectrum file name; expected the form {_NAME_FORM}, "
            "e.g. bosz2024_mp_t5750_g+4.5_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz"
        )
    return _params_from_match(match)


def _params_from_match(match: re.Match) -> dict:
    g = match.groupdict()
    res = g["resolution"]
    return {
        "atm": g["atm"],
        "teff": int(g["teff"]),
        "logg": float(g["logg"]) + 0.0,
        "mh": float(g["mh"]) + 0.0,
        "alpha": float(g["alpha"]) + 0.0,
        "carbon": float(g["carbon"]) + 0.0,
        "vturb": int(g["vturb"]),
        "resolution": res if res == "orig" else int(res),
        "resampled": g["kind"] == "resam",
    }


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not float(value).is_integer() or value < 0:
        raise TemplateError(
            f"{name}={value!r} cannot appear in a BOSZ name: it must be a whole number ≥ 0"
        )
    return int(float(value))


def _signed(name: str, value, decimals: int) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    rounded = round(float(value), decimals)
    if not abs(rounded - float(value)) < 1e-6:
        raise TemplateError(
            f"{name}={value!r} cannot appear in a BOSZ name, which keeps {decimals} decimal(s); "
            "pass a value of the grid"
        )
    return f"{rounded + 0.0:+.{decimals}f}"  # + 0.0 turns -0.0 into +0.00, as BOSZ writes it


def bosz_atmosphere(teff: float, logg: float) -> str:
    """The atmosphere code BOSZ 2024 uses at a node.

    ``ap`` (ATLAS9) above 8000 K; MARCS at and below: ``ms`` (spherical) for
    log g < 3.5, ``mp`` (plane-parallel) otherwise.  (The archive also has
    ATLAS9 models at 7500–8000 K; see ``atmosphere=`` of :func:`open_bosz`.)
    """
    if teff > 8000:
        return "ap"
    return "ms" if logg < 3.5 else "mp"


def bosz_name(
    *,
    teff: float,
    logg: float,
    mh: float,
    resolution: int | str,
    alpha: float = 0.0,
    carbon: float = 0.0,
    vturb: int = 2,
    atm: str | None = None,
    resampled: bool = True,
) -> str:
    """The BOSZ 2024 file name of a model: the inverse of :func:`parse_bosz_name`.

    Parameters
    ----------
    teff, logg, mh, resolution, alpha, carbon, vturb, atm, resampled
        As returned by :func:`parse_bosz_name`; ``atm=None`` picks the code of
        :func:`bosz_atmosphere`.

    Returns
    -------
    str
        e.g. ``bosz2024_mp_t5750_g+4.5_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz``.

    Raises
    ------
    TemplateError
        If a value cannot be written in the name's precision (e.g. log g 4.25).
    TypeError
        If a value is not a number.
    """
    if atm is None:
        atm = bosz_atmosphere(teff, logg)
    if not re.fullmatch(r"[a-z]+", str(atm)):
        raise TemplateError(f"atm={atm!r} is not a BOSZ atmosphere code (ap, mp, ms)")
    res = "orig" if resolution == "orig" else _integer("resolution", resolution)
    return (
        f"bosz2024_{atm}_t{_integer('teff', teff)}_g{_signed('logg', logg, 1)}"
        f"_m{_signed('mh', mh, 2)}_a{_signed('alpha', alpha, 2)}_c{_signed('carbon', carbon, 2)}"
        f"_v{_integer('vturb', vturb)}_r{res}_{'resam' if resampled else 'noresam'}.txt.gz"
    )


def bosz_folder(resolution: int | str, mh: float) -> str:
    """Folder of a model in the archive layout, e.g. ``r10000/m-0.50``."""
    res = "orig" if resolution == "orig" else _integer("resolution", resolution)
    return f"r{res}/m{_signed('mh', mh, 2)}"


def wave_grid_name(resolution: int) -> str:
    """File name of the shared wavelength grid of the ``resam`` files at one R."""
    return f"bosz2024_wave_r{int(resolution)}.txt"


# ---------------------------------------------------------------------------
# NumPy reader of one file
# ---------------------------------------------------------------------------
