"""Segmentation training on a (decoded) dataset: the built-in MONAI U-Net backend."""
