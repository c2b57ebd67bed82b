"""Data medlossy can make or fetch offline: the embedded demo (real CT/MR from PyPI)."""
