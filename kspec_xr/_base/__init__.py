"""The foundation every layer stands on: errors, mask bits, the data model, provenance.

Modules here import nothing from the rest of kspec_xr; among themselves only
``errors`` and ``paths`` are imported (see README, Development).
"""
