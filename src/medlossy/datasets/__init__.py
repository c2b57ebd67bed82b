"""Datasets on disk: nnU-Net v2 raw folders."""
