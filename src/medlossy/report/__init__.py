"""Figures, tables and the report files."""
