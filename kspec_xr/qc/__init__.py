"""Quality control: the QC figure and the numbers behind it."""

from .figure import check_plot_path, plot_calibration
from .tables import line_band_departures, standards_summary, standards_table

__all__ = [
    "plot_calibration",
    "check_plot_path",
    "standards_table",
    "standards_summary",
    "line_band_departures",
]
