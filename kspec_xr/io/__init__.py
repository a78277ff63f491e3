"""Files in and out: RED files, catalogues of standard stars, fiber assignments.

``read`` and ``write`` turn RED files into Datasets and back; ``catalog`` reads
standard-star catalogues; ``assign`` reads a tile's fiber assignment.  They
share only ``_fits`` (the layout's names and the FITS encoding).
"""

from .assign import TARGET_CLASS_TYPES, assign_fiber_types, read_assign
from .catalog import catalog_bands, read_catalog
from .read import open_red
from .write import calibration_header, calibration_summary, calibration_warning, write_red

__all__ = [
    "open_red",
    "write_red",
    "calibration_header",
    "calibration_summary",
    "calibration_warning",
    "read_catalog",
    "catalog_bands",
    "read_assign",
    "assign_fiber_types",
    "TARGET_CLASS_TYPES",
]
