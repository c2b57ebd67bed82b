"""Volumes in and out: NIfTI, NRRD and DICOM series, picked by file name."""

from medlossy.io.registry import read_volume, write_volume

__all__ = ["read_volume", "write_volume"]
