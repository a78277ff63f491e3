"""Checks of option values, shared by the stages, the driver and the command line.

Every public function checks its options with these before any work, so a
wrong value is refused at once with an :class:`OptionError` that names the
option, instead of being coerced (``smooth="no"`` is not true, ``sigma=-3``
is not a clipping threshold).
"""

from __future__ import annotations

import math
import numbers

from .errors import OptionError

__all__ = ["flag", "choice", "finite_number", "positive_number", "bounded", "positive_int"]


def flag(name: str, value) -> bool:
    """``value`` as a bool: only True/False (and NumPy bools) are accepted."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise OptionError(f"{name} must be True or False, not {value!r}")


def choice(name: str, value, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased, which must be one of ``choices``."""
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise OptionError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def finite_number(name: str, value) -> float:
    """``value`` as a finite float (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise OptionError(f"{name} must be a finite number, not {value!r}")
    return number


def positive_number(name: str, value) -> float:
    """``value`` as a finite float greater than 0."""
    number = finite_number(name, value)
    if not number > 0:
        raise OptionError(f"{name} must be greater than 0, not {value!r}")
    return number


def bounded(name: str, value, low: float, high: float = math.inf, why: str = "") -> float:
    """``value`` as a finite float in ``[low, high]``; ``why`` is added to the message."""
    number = finite_number(name, value)
    if not low <= number <= high:
        where = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise OptionError(f"{name} must be {where}, not {value!r}{why}")
    return number


def positive_int(name: str, value) -> int:
    """``value`` as an int of at least 1 (integral floats are not accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise OptionError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)
