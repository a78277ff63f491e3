"""Exceptions raised for bad input.

Every error a user can cause with a file or an argument is a ``ValueError``
subclass (``TypeError`` is kept for arguments of the wrong type) whose message
names the file, HDU, column or fiber at fault and says what to do about it.
The command line prints these as one line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "KspecError",
    "RedFileError",
    "CatalogError",
    "TemplateError",
    "CalibrationError",
    "OutputExistsError",
    "OutputError",
    "OptionError",
    "KspecWarning",
]


class KspecError(ValueError):
    """Base class of every input error raised by kspec_xr."""


class RedFileError(KspecError):
    """A RED file is missing, unreadable or not laid out as 2dfdr writes it."""


class CatalogError(KspecError):
    """A standard-star catalogue (or assign file) cannot be used."""


class TemplateError(KspecError):
    """A template grid (BOSZ directory, packed cube or file) cannot be used."""


class CalibrationError(KspecError):
    """The data do not allow a flux calibration (e.g. no usable standard)."""


class OutputExistsError(KspecError, FileExistsError):
    """An output path exists and the caller did not ask to overwrite it."""


class OutputError(KspecError):
    """An output cannot be written where asked (missing or read-only folder, no space)."""


class OptionError(KspecError, TypeError):
    """An option of a function or of the command line has a wrong type or value."""


class KspecWarning(UserWarning):
    """Input that kspec_xr can use only in part (e.g. catalogue rows it must leave out)."""
