"""Band maps: which catalogue column is which speclite filter, in which magnitude system.

A catalogue of standard stars can come from any survey; a :class:`BandMap`
says, for each photometric column, which filter curve of speclite
(:data:`kspec_xr._base.bands.KNOWN_BANDS`) it is measured through, how to turn
it into an AB magnitude, and where its error is.  :func:`kspec_xr.read_catalog`
applies it; :func:`resolve_bands` turns what a user gives (``bands=``) into
band maps.

What ``bands=`` may be
----------------------
``None``
    ATLAS-RefCat2, as :func:`read_catalog` has always read it (preset ``refcat2``).
a preset name (str)
    One of :data:`PRESETS` (``"des"``, ``"gaiadr3"``, ``"legacy"``, …; see the
    table in the README, section "Photometric systems").
a mapping ``{column: spec}``
    ``spec`` is one of

    * ``"decam2014-g"`` -- the band; AB, no error column;
    * ``("decam2014-g", system)`` or ``("decam2014-g", system, error_column)``
      with ``system`` ``"AB"``, ``"Vega"`` (offset from
      :data:`kspec_xr._base.bands.VEGA_TO_AB`) or a number, the offset
      m_AB − m_catalogue added to the catalogue value (``None`` or ``""``: AB);
    * a dict with the keys ``band`` (required), ``system``, ``error``,
      ``error_kind`` (``"mag"``: the error column is a 1σ error in mag, the
      default; ``"snr"``: it is flux/σ(flux); ``"ivar"``: the inverse variance
      of the flux; ``"flux_error"``: σ of the flux in ``error_flux``),
      ``error_flux`` (the flux column an ``ivar``/``flux_error`` refers to;
      default the band's own column when ``unit="nanomaggy"``) and ``unit``
      (``"mag"``, default, or ``"nanomaggy"``: the column is a flux, m = 22.5 −
      2.5 log10 f, AB).

    Example: ``{"g": ("decam2014-g", "AB"), "r": ("decam2014-r", "AB", "err_r"),
    "Jmag": ("twomass-J", "Vega", "e_Jmag"), "u": ("sdss2010-u", -0.04)}``.
an inline string ``"COL=BAND[:SYSTEM[:ERROR]],..."``
    The command line's form (``--bands``): ``g=decam2014-g,r=decam2014-r``
    (AB, no errors), ``Jmag=twomass-J:Vega:e_Jmag``, ``r=decam2014-r::err_r``
    (AB, error column ``err_r``), ``u=sdss2010-u:-0.04``.  Columns with
    blanks, commas, ``=`` or ``:`` in their names need a TOML file.
a path to a ``.toml`` file (str or os.PathLike)
    ::

        # optional: error (mag) of magnitudes without one; false: leave them out
        default_error = 0.03
        # optional: the column of E(B-V)
        ebv_column = "EBV_SFD98"

        [bands]
        "MAG_AUTO_G" = { band = "decamDR1-g", error = "MAGERR_AUTO_G" }
        "CoAdd mag_auto r" = "decam2014-r"
        Jmag = ["twomass-J", "Vega", "e_Jmag"]

a :class:`BandMap` or :class:`Preset`
    Used as it is.

Missing values
--------------
A magnitude is missing when blank, non-numeric or non-finite, when it is
outside −5 < m < 40 (which takes the 99, 99.99, 99.999, −99, −999, −9999
sentinels) and when it is exactly 0 (the "no value" of many query
services, RefCat2's too; a map built with ``zero_missing=False`` keeps 0); a
flux (``unit="nanomaggy"``) when ≤ 0.  An error is missing when blank,
non-finite, 0 or negative (never a weight); the magnitude then gets the map's
``default_error`` (:data:`DEFAULT_ERROR`, 0.03 mag, unless the map says
otherwise) and ``mag_err_default`` records it -- or, with ``default_error``
None (RefCat2, unless ``read_catalog(default_error=...)`` gives one), is left
out.  An error ≥ 9 mag is the survey saying the measurement is worthless: the
magnitude is left out.

Columns match exactly, else case-insensitively when only one column fits.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from .bands import KNOWN_BANDS, VEGA_TO_AB
from .errors import CatalogError

__all__ = [
    "DEFAULT_ERROR",
    "EBV_COLUMNS",
    "ERROR_KINDS",
    "MAG_PER_SNR",
    "SDSS_AB_OFFSETS",
    "BandSpec",
    "BandMap",
    "Preset",
    "PRESETS",
    "resolve_bands",
    "parse_inline",
    "read_band_map",
    "with_options",
]

#: Error (mag) given to a magnitude whose catalogue has no error for it
#: (a typical zero-point-plus-aperture uncertainty of a survey's bright stars).
DEFAULT_ERROR = 0.03

#: 2.5 / ln 10 = 1.0857…: σ_m = MAG_PER_SNR / (F / σ_F).
MAG_PER_SNR = 2.5 / math.log(10.0)

#: E(B−V) columns recognised (case-insensitively, in this order) when neither
#: the band map nor ``ebv_column=`` names one.  ``EBV_SFD98``: DES DR1/DR2;
#: ``ebv``: Legacy Surveys; ``E(B-V)``: VizieR's usual label.
EBV_COLUMNS: tuple[str, ...] = (
    "ebv",
    "E(B-V)",
    "E_BV",
    "E_B-V",
    "EBV_SFD",
    "EBV_SFD98",
    "SFD_EBV",
)

#: m_AB − m_SDSS of the SDSS 2.5 m photometry: u_AB = u_SDSS − 0.04,
#: z_AB = z_SDSS + 0.02; g, r, i are AB to ~0.01 mag (SDSS DR7+ "Photometric
#: flux calibration" documentation; Abazajian et al. 2004, AJ 128, 502).
SDSS_AB_OFFSETS: Mapping[str, float] = MappingProxyType({"sdss2010-u": -0.04, "sdss2010-z": 0.02})

ERROR_KINDS: tuple[str, ...] = ("mag", "snr", "ivar", "flux_error")
_UNITS = ("mag", "nanomaggy")
_SPEC_KEYS = ("band", "system", "error", "error_kind", "error_flux", "unit")
_TOML_KEYS = ("bands", "default_error", "ebv_column", "name")


# --------------------------------------------------------------------------
# The band map
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BandSpec:
    """One photometric column of a catalogue.

    Attributes
    ----------
    column : str
        The catalogue column: a magnitude, or a flux when ``unit="nanomaggy"``.
    band : str
        speclite filter name (:data:`kspec_xr._base.bands.KNOWN_BANDS`).
    system : {"AB", "Vega", "offset"}
        The catalogue's magnitude system: ``"offset"`` when the offset was given
        as a number.
    offset : float
        m_AB − m_catalogue, added to the catalogue value (mag).
    error : str or None
        Column of the error, or None (the map's default error is used).
    error_kind : {"mag", "snr", "ivar", "flux_error"}
        What ``error`` holds: σ in mag; flux/σ(flux) (σ_m = 1.0857/snr); the
        inverse variance of the flux ``error_flux`` (σ_m = 1.0857/(f √ivar));
        σ of the flux ``error_flux`` (σ_m = 1.0857 σ_f / f).
    error_flux : str or None
        The flux column of an ``ivar`` or ``flux_error`` error (default: the
        band's own column when it is a flux).
    unit : {"mag", "nanomaggy"}
        ``"nanomaggy"``: the column is a flux f, m_AB = 22.5 − 2.5 log10 f.
    """

    column: str
    band: str
    system: str = "AB"
    offset: float = 0.0
    error: str | None = None
    error_kind: str = "mag"
    error_flux: str | None = None
    unit: str = "mag"

    def __post_init__(self) -> None:
        where = f"band map entry {self.column!r}"
        if not isinstance(self.column, str) or not self.column.strip():
            raise CatalogError(
                f"band map: a column name must be a non-empty str, got {self.column!r}"
            )
        _check_band(self.band, where)
        if self.system not in ("AB", "Vega", "offset"):
            raise CatalogError(
                f"{where}: system must be 'AB', 'Vega' or a number, not {self.system!r}"
            )
        if not math.isfinite(self.offset):
            raise CatalogError(f"{where}: the AB offset must be finite, got {self.offset!r}")
        if self.error is not None and (not isinstance(self.error, str) or not self.error.strip()):
            raise CatalogError(f"{where}: the error column must be a non-empty str or None")
        if self.error_kind not in ERROR_KINDS:
            raise CatalogError(
                f"{where}: error_kind must be one of {', '.join(ERROR_KINDS)}, not {self.error_kind!r}"
            )
        if self.unit not in _UNITS:
            raise CatalogError(f"{where}: unit must be 'mag' or 'nanomaggy', not {self.unit!r}")
        if (
            self.error is not None
            and self.error_kind in ("ivar", "flux_error")
            and self.unit == "mag"
            and self.error_flux is None
        ):
            raise CatalogError(
                f"{where}: an error of kind {self.error_kind!r} refers to a flux; name its flux "
                "column with error_flux"
            )

    @property
    def flux_column(self) -> str | None:
        """The flux column an ``ivar`` / ``flux_error`` error refers to (None otherwise)."""
        if self.error is None or self.error_kind not in ("ivar", "flux_error"):
            return None
        return self.error_flux or self.column

    def columns(self) -> tuple[str, ...]:
        """Every catalogue column this entry reads."""
        cols = [self.column, self.error, self.flux_column]
        return tuple(dict.fromkeys(c for c in cols if c))


@dataclass(frozen=True)
class BandMap:
    """Which catalogue columns are which bands, for one catalogue layout.

    Attributes
    ----------
    bands : tuple of BandSpec
        One per band, in the order of the ``band`` dimension.
    name : str
        Preset name, file name or ``"band map"`` (recorded in the output).
    default_error : float or None
        Error (mag) of a magnitude without one; None: such a magnitude is
        left out, and a magnitude column whose error column is absent is an error.
    ebv_column : str or None
        The column of E(B−V) (mag); None: look for :data:`EBV_COLUMNS`.
    require_all : bool
        Every column named must be in the catalogue (a user's map); False (a
        preset): bands whose magnitude column is absent are skipped.
    zero_missing : bool
        A magnitude of exactly 0 is missing (True for every preset).  An error
        of 0 or below is always missing.
    """

    bands: tuple[BandSpec, ...]
    name: str = "band map"
    default_error: float | None = DEFAULT_ERROR
    ebv_column: str | None = None
    require_all: bool = True
    zero_missing: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.bands, tuple) or not all(
            isinstance(b, BandSpec) for b in self.bands
        ):
            raise TypeError("BandMap.bands must be a tuple of BandSpec")
        if not self.bands:
            raise CatalogError(
                f"{self.name}: the band map names no column; give at least one, e.g. "
                "{'g': 'decam2014-g'}"
            )
        seen: dict[str, str] = {}
        for spec in self.bands:
            if spec.band in seen:
                raise CatalogError(
                    f"{self.name}: band {spec.band!r} is given twice (columns {seen[spec.band]!r} "
                    f"and {spec.column!r}); map each band once"
                )
            seen[spec.band] = spec.column
        columns = [s.column for s in self.bands]
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise CatalogError(f"{self.name}: column(s) {dupes} mapped twice; map each column once")
        _check_default_error(self.default_error, self.name)
        if self.ebv_column is not None and (
            not isinstance(self.ebv_column, str) or not self.ebv_column.strip()
        ):
            raise CatalogError(f"{self.name}: ebv_column must be a non-empty str or None")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(s.band for s in self.bands)

    def magnitude_columns(self) -> tuple[str, ...]:
        return tuple(s.column for s in self.bands)


@dataclass(frozen=True)
class Preset:
    """A survey's catalogue layout(s), tried in order; the first whose columns are there is used.

    ``unavailable`` is set (and the preset refuses to read) when speclite has
    no filter curve for the survey.
    """

    name: str
    layouts: tuple[BandMap, ...]
    description: str
    columns_from: str
    unavailable: str = ""


def _check_band(band: object, where: str) -> None:
    if not isinstance(band, str):
        raise CatalogError(f"{where}: the band must be a speclite name (str), got {band!r}")
    if band not in KNOWN_BANDS:
        raise CatalogError(
            f"{where}: unknown band {band!r}; use one of the speclite names "
            f"{', '.join(KNOWN_BANDS)}"
        )


def _check_default_error(value: object, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: default_error must be a number (mag) or None, got {value!r}")
    if not (0.0 < float(value) < 9.0):
        raise CatalogError(
            f"{where}: default_error must be between 0 and 9 mag, got {value!r} (e.g. 0.03)"
        )


# --------------------------------------------------------------------------
# Parsing what the user gives
# --------------------------------------------------------------------------


def _system(value: object, band: str, where: str) -> tuple[str, float]:
    """(system label, m_AB − m_catalogue) of a ``system`` value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "AB", 0.0
    if isinstance(value, bool):
        raise CatalogError(f"{where}: system must be 'AB', 'Vega' or a number, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise CatalogError(f"{where}: the AB offset must be finite, got {value!r}")
        return "offset", float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "ab":
            return "AB", 0.0
        if text.lower() == "vega":
            _check_band(band, where)
            if band not in VEGA_TO_AB:
                raise CatalogError(
                    f"{where}: band {band!r} has no Vega -> AB offset in kspec_xr "
                    f"(VEGA_TO_AB knows {', '.join(VEGA_TO_AB)}); give m_AB - m_catalogue as "
                    "a number instead of 'Vega'"
                )
            return "Vega", float(VEGA_TO_AB[band])
        try:
            return _system(float(text), band, where)
        except ValueError:
            pass
    raise CatalogError(
        f"{where}: system must be 'AB', 'Vega' or a number (m_AB - m_catalogue), not {value!r}"
    )


def _spec(column: object, value: object, where: str) -> BandSpec:
    if not isinstance(column, str):
        raise TypeError(f"{where}: a column name must be a str, got {column!r}")
    here = f"{where}, column {column!r}"
    if isinstance(value, str):
        return BandSpec(column, value)
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - set(_SPEC_KEYS))
        if unknown:
            raise CatalogError(
                f"{here}: unknown key(s) {unknown}; an entry may have {', '.join(_SPEC_KEYS)}"
            )
        if "band" not in value:
            raise CatalogError(f"{here}: the entry needs a 'band' (a speclite name)")
        band = value["band"]
        _check_band(band, here)
        system, offset = _system(value.get("system"), band, here)
        error = value.get("error") or None
        return BandSpec(
            column,
            band,
            system,
            offset,
            error,
            str(value.get("error_kind", "mag")),
            value.get("error_flux") or None,
            str(value.get("unit", "mag")),
        )
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        items = list(value)
        if not 1 <= len(items) <= 3:
            raise CatalogError(
                f"{here}: give (band,), (band, system) or (band, system, error column), "
                f"not {len(items)} items"
            )
        band = items[0]
        _check_band(band, here)
        system, offset = _system(items[1] if len(items) > 1 else None, band, here)
        error = items[2] if len(items) > 2 else None
        if error is not None and not isinstance(error, str):
            raise CatalogError(f"{here}: the error column must be a str, got {error!r}")
        return BandSpec(column, band, system, offset, error or None)
    raise TypeError(
        f"{here}: an entry must be a band name, a (band, system[, error]) tuple or a dict, "
        f"got {type(value).__name__}"
    )


def _from_mapping(
    mapping: Mapping, *, name: str, default_error: float | None = DEFAULT_ERROR, ebv_column=None
) -> BandMap:
    where = name
    specs = tuple(_spec(column, value, where) for column, value in mapping.items())
    return BandMap(specs, name=name, default_error=default_error, ebv_column=ebv_column)


def parse_inline(text: str) -> BandMap:
    """A band map from ``"COL=BAND[:SYSTEM[:ERROR]],..."`` (the command line's ``--bands``).

    ``SYSTEM`` is ``AB`` (default, also when empty), ``Vega`` or a number
    (m_AB − m_catalogue); ``ERROR`` the error column (none: the default error).

    Examples
    --------
    >>> [s.band for s in parse_inline("g=decam2014-g,r=decam2014-r::err_r").bands]
    ['decam2014-g', 'decam2014-r']
    """
    if not isinstance(text, str):
        raise TypeError(f"an inline band map is a str, got {type(text).__name__}")
    mapping: dict[str, tuple[str, str, str]] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        column, sep, rest = item.partition("=")
        column = column.strip()
        parts = [p.strip() for p in rest.split(":")]
        if not sep or not column or not parts[0] or len(parts) > 3:
            raise CatalogError(
                f"band map {text!r}: cannot read {item!r}; write COLUMN=BAND[:SYSTEM[:ERROR]], "
                "e.g. g=decam2014-g or Jmag=twomass-J:Vega:e_Jmag (SYSTEM: AB, Vega or a number)"
            )
        if column in mapping:
            raise CatalogError(f"band map {text!r}: column {column!r} is given twice")
        parts += [""] * (3 - len(parts))
        mapping[column] = (parts[0], parts[1], parts[2])
    if not mapping:
        raise CatalogError(
            f"band map {text!r} names no column; write e.g. g=decam2014-g,r=decam2014-r"
        )
    return _from_mapping(mapping, name="band map")


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise CatalogError(
                f"reading the band map {str(path)!r} needs Python >= 3.11 (tomllib) or the "
                "'tomli' package; give the map as a dict or an inline string instead"
            ) from None
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"band map {str(path)!r} is not valid TOML: {exc}") from exc


def read_band_map(path: str | os.PathLike) -> BandMap:
    """A band map from a TOML file (layout: see the module docstring).

    Raises
    ------
    CatalogError
        Missing file, invalid TOML, no ``[bands]`` table, unknown keys or bands.
    """
    file = Path(path)
    if not file.is_file():
        raise CatalogError(
            f"band map file {str(file)!r} does not exist; give a TOML file with a [bands] table, "
            f"a preset name ({', '.join(PRESETS)}) or COL=BAND,..."
        )
    doc = _load_toml(file)
    where = f"band map {str(file)!r}"
    unknown = sorted(set(doc) - set(_TOML_KEYS))
    if unknown:
        raise CatalogError(
            f"{where}: unknown key(s) {unknown}; a band map file has a [bands] table and "
            "optionally default_error, ebv_column and name"
        )
    table = doc.get("bands")
    if not isinstance(table, Mapping):
        raise CatalogError(
            f'{where} has no [bands] table; add one, e.g. [bands] then g = "decam2014-g"'
        )
    default_error = doc.get("default_error", DEFAULT_ERROR)
    if default_error is False:
        default_error = None
    _check_default_error(default_error, where)
    ebv_column = doc.get("ebv_column")
    if ebv_column is not None and not isinstance(ebv_column, str):
        raise CatalogError(f"{where}: ebv_column must be a str")
    name = doc.get("name", file.name)
    return _from_mapping(
        table, name=str(name), default_error=default_error, ebv_column=ebv_column or None
    )


def resolve_bands(bands: object) -> tuple[tuple[BandMap, ...], str]:
    """The candidate layouts of ``bands=`` and their name (see the module docstring).

    Returns
    -------
    layouts, name : tuple of BandMap, str
        One layout for a user's map; a preset's layouts in the order they are tried.

    Raises
    ------
    CatalogError
        Unknown preset (the message lists them), a preset without filter
        curves, a bad entry, band or file.
    TypeError
        ``bands`` of another type.
    """
    if bands is None:
        preset = PRESETS["refcat2"]
        return preset.layouts, preset.name
    if isinstance(bands, BandMap):
        return (bands,), bands.name
    if isinstance(bands, Preset):
        return _preset_layouts(bands), bands.name
    if isinstance(bands, os.PathLike):
        bm = read_band_map(bands)
        return (bm,), bm.name
    if isinstance(bands, str):
        text = bands.strip()
        if text.lower().endswith(".toml"):
            bm = read_band_map(text)
            return (bm,), bm.name
        if "=" in text:
            bm = parse_inline(text)
            return (bm,), bm.name
        key = text.lower()
        if key in PRESETS:
            return _preset_layouts(PRESETS[key]), key
        raise CatalogError(
            f"bands={bands!r} is not a preset ({', '.join(PRESETS)}), a COL=BAND,... map or a "
            ".toml file"
        )
    if isinstance(bands, Mapping):
        return (_from_mapping(bands, name="band map"),), "band map"
    raise TypeError(
        "bands must be None, a preset name, a {column: band spec} mapping, a COL=BAND,... "
        f"string, a .toml path or a BandMap, not {type(bands).__name__}"
    )


def _preset_layouts(preset: Preset) -> tuple[BandMap, ...]:
    if preset.unavailable:
        raise CatalogError(f"preset {preset.name!r}: {preset.unavailable}")
    return preset.layouts


# --------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------


def _layout(name, specs, **kwargs) -> BandMap:
    return BandMap(tuple(specs), name=name, require_all=False, **kwargs)


def _ab(column, band, error=None, **kwargs) -> BandSpec:
    return BandSpec(column, band, "AB", 0.0, error, **kwargs)


def _vega(column, band, error=None, **kwargs) -> BandSpec:
    return BandSpec(column, band, "Vega", float(VEGA_TO_AB[band]), error, **kwargs)


_REFCAT2 = _layout(
    "refcat2",
    [
        _vega("Gaia", "gaiadr2-G", "dGaia"),
        _vega("BP", "gaiadr2-BP", "dBP"),
        _vega("RP", "gaiadr2-RP", "dRP"),
        *(_ab(b, f"panstarrs-{b}", f"d{b}") for b in "griz"),
        _vega("J", "twomass-J", "dJ"),
        _vega("H", "twomass-H", "dH"),
        _vega("K", "twomass-Ks", "dK"),
    ],
    default_error=None,
)

_DECAM = "grizY"

_OZDES = _layout(
    "ozdes",
    [_ab(f"CoAdd mag_auto {b}", f"decam2014-{b}") for b in _DECAM],
    default_error=0.02,
)


def _sdss_spec(b: str) -> BandSpec:
    band = f"sdss2010-{b}"
    if band in SDSS_AB_OFFSETS:
        return BandSpec(f"psfMag_{b}", band, "offset", SDSS_AB_OFFSETS[band], f"psfMagErr_{b}")
    return _ab(f"psfMag_{b}", band, f"psfMagErr_{b}")


_PRESET_LIST = [
    Preset(
        "refcat2",
        (_REFCAT2,),
        "ATLAS-RefCat2: Gaia DR2 G/BP/RP (Vega), Pan-STARRS1 g r i z (AB), 2MASS J H K (Vega); "
        "errors dGaia, dg, …; no default error; 0 = missing",
        "Tonry et al. 2018, ApJ 867, 105, Table 4 (MAST/CasJobs and ATLAS query output)",
    ),
    Preset(
        "des",
        (
            _layout(
                "des",
                [
                    _ab(f"MAG_AUTO_{b.upper()}", f"decamDR1-{b}", f"MAGERR_AUTO_{b.upper()}")
                    for b in _DECAM
                ],
            ),
            _OZDES,
        ),
        "DES DR1/DR2 coadd MAG_AUTO_G … _Y with MAGERR_AUTO_*, AB, on the DES DR1 standard "
        "bandpasses (speclite decamDR1-*); falls back to the OzDES 2014 layout (preset 'ozdes')",
        "DES DR1 (Abbott et al. 2018, ApJS 239, 18) and DR2 (Abbott et al. 2021, ApJS 255, 20) "
        "coadd object tables (des_dr1.main, des_dr2.main); EBV_SFD98 is their E(B-V)",
    ),
    Preset(
        "des_psf",
        (
            _layout(
                "des_psf",
                [
                    _ab(
                        f"WAVG_MAG_PSF_{b.upper()}", f"decamDR1-{b}", f"WAVG_MAGERR_PSF_{b.upper()}"
                    )
                    for b in _DECAM
                ],
            ),
        ),
        "DES DR1/DR2 weighted-average PSF magnitudes WAVG_MAG_PSF_G … _Y with "
        "WAVG_MAGERR_PSF_*, AB, decamDR1-*",
        "DES DR1/DR2 coadd object tables (des_dr1.main, des_dr2.main)",
    ),
    Preset(
        "ozdes",
        (_OZDES,),
        "the OzDES F-star file of 2014 (des_fstars_2014.csv): 'CoAdd mag_auto g' … 'Y' (DES "
        "SVA1 coadd MAG_AUTO, AB, decam2014-*), no errors (0.02 mag assumed), 0 = missing",
        "the column names of des_fstars_2014.csv (mjcowley/TAIPAN-FluxCal, photometry/)",
    ),
    Preset(
        "sdss",
        (_layout("sdss", [_sdss_spec(b) for b in "ugriz"]),),
        "SDSS PSF magnitudes psfMag_u … _z with psfMagErr_*, on speclite sdss2010-*; AB with "
        "u_AB = u - 0.04 and z_AB = z + 0.02 applied (SDSS_AB_OFFSETS); -9999 = missing",
        "SDSS CasJobs PhotoObj/Star columns (SkyServer schema browser)",
    ),
    Preset(
        "panstarrs",
        (
            _layout(
                "panstarrs",
                [_ab(f"{b}MeanPSFMag", f"panstarrs-{b}", f"{b}MeanPSFMagErr") for b in "grizy"],
            ),
        ),
        "Pan-STARRS1 DR2 mean PSF magnitudes gMeanPSFMag … yMeanPSFMag with *MeanPSFMagErr, AB; "
        "-999 = missing",
        "PS1 DR2 MeanObject table (MAST catalogs.mast.stsci.edu/panstarrs)",
    ),
    Preset(
        "gaiadr3",
        (
            _layout(
                "gaiadr3",
                [
                    _vega(
                        f"phot_{b.lower()}_mean_mag",
                        f"gaiadr3-{b}",
                        f"phot_{b.lower()}_mean_flux_over_error",
                        error_kind="snr",
                    )
                    for b in ("G", "BP", "RP")
                ],
            ),
            _layout(
                "gaiadr3 (VizieR I/355)",
                [_vega(f"{b}mag", f"gaiadr3-{b}", f"e_{b}mag") for b in ("G", "BP", "RP")],
            ),
        ),
        "Gaia DR3 phot_g/bp/rp_mean_mag (Vega, VEGA_TO_AB of gaiadr3-*); errors "
        "1.0857/phot_*_mean_flux_over_error when present; VizieR Gmag/e_Gmag … too",
        "Gaia DR3 gaia_source data model (gea.esac.esa.int); VizieR I/355/gaiadr3",
    ),
    Preset(
        "gaia_xp",
        (
            _layout(
                "gaia_xp",
                [
                    *(
                        _ab(
                            f"{b}_sdss_mag",
                            f"sdss2010-{b}",
                            f"{b}_sdss_flux_error",
                            error_kind="flux_error",
                            error_flux=f"{b}_sdss_flux",
                        )
                        for b in "ugriz"
                    ),
                    _ab(
                        "y_ps1_mag",
                        "panstarrs-y",
                        "y_ps1_flux_error",
                        error_kind="flux_error",
                        error_flux="y_ps1_flux",
                    ),
                ],
            ),
        ),
        "Gaia DR3 synthetic photometry (GSPC) u/g/r/i/z_sdss_mag (sdss2010-*) and y_ps1_mag "
        "(panstarrs-y), AB; errors 1.0857 flux_error/flux.  Not mapped: the JKC U B V R I "
        "(kspec_xr has no Johnson-Kron-Cousins band) and HST ACS/WFC F606W/F814W (no speclite "
        "curve)",
        "Gaia DR3 synthetic_photometry_gspc data model (gea.esac.esa.int; Gaia Collaboration, "
        "Montegriffo et al. 2023, A&A 674, A33)",
    ),
    Preset(
        "skymapper",
        (),
        "SkyMapper DR2/DR4 u_psf … z_psf: no filter curves in speclite",
        "SkyMapper DR2 master table (Onken et al. 2019, PASA 36, e033)",
        unavailable=(
            "speclite ships no SkyMapper (u v g r i z) filter curves, so kspec_xr cannot compute "
            "synthetic SkyMapper magnitudes and offers no SkyMapper preset (a curve is never "
            "typed in by hand).  Map other photometry of the stars, or map SkyMapper columns "
            "(u_psf, e_u_psf, g_psf, e_g_psf, ...) to a speclite band yourself only if you accept "
            "the bandpass difference: bands={'g_psf': ('sdss2010-g', 'AB', 'e_g_psf')}"
        ),
    ),
    Preset(
        "legacy",
        (
            _layout(
                "legacy",
                [
                    _ab(
                        f"flux_{b}",
                        f"decam2014-{b}",
                        f"flux_ivar_{b}",
                        error_kind="ivar",
                        unit="nanomaggy",
                    )
                    for b in "griz"
                ],
            ),
        ),
        "Legacy Surveys DR9/DR10 south (DECam) flux_g/r/i/z in nanomaggies, m = 22.5 - "
        "2.5 log10 f (AB, not dereddened), errors from flux_ivar_*; decam2014-*; 'ebv' column",
        "Legacy Surveys DR9/DR10 Tractor and sweep catalogues (legacysurvey.org/dr9/catalogs)",
    ),
    Preset(
        "legacy_north",
        (
            _layout(
                "legacy_north",
                [
                    _ab("flux_g", "BASS-g", "flux_ivar_g", error_kind="ivar", unit="nanomaggy"),
                    _ab("flux_r", "BASS-r", "flux_ivar_r", error_kind="ivar", unit="nanomaggy"),
                    _ab("flux_z", "MzLS-z", "flux_ivar_z", error_kind="ivar", unit="nanomaggy"),
                ],
            ),
        ),
        "Legacy Surveys DR9 north (Dec > 32.375, BASS g r + MzLS z): flux_g/r/z as 'legacy', "
        "on speclite BASS-g, BASS-r, MzLS-z",
        "Legacy Surveys DR9 north Tractor and sweep catalogues",
    ),
    Preset(
        "twomass",
        (
            _layout(
                "twomass (VizieR II/246)",
                [
                    _vega("Jmag", "twomass-J", "e_Jmag"),
                    _vega("Hmag", "twomass-H", "e_Hmag"),
                    _vega("Kmag", "twomass-Ks", "e_Kmag"),
                ],
            ),
            _layout(
                "twomass (IRSA fp_psc)",
                [
                    _vega("j_m", "twomass-J", "j_msigcom"),
                    _vega("h_m", "twomass-H", "h_msigcom"),
                    _vega("k_m", "twomass-Ks", "k_msigcom"),
                ],
            ),
        ),
        "2MASS PSC J H Ks (Vega, VEGA_TO_AB of twomass-*): VizieR Jmag/e_Jmag …, or IRSA "
        "j_m/j_msigcom …",
        "VizieR II/246/out; IRSA fp_psc (2MASS All-Sky Explanatory Supplement, sec. 2.2a)",
    ),
]

#: Built-in band maps by name (see :class:`Preset`; the README's "Photometric systems").
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESET_LIST})


def with_options(bm: BandMap, **changes) -> BandMap:
    """``bm`` with ``default_error`` / ``ebv_column`` replaced (validated again)."""
    return replace(bm, **changes)
