"""Evaluate pretrained segmentation networks on every ratio of a sweep.

``swin_unetr``: a MONAI Swin UNETR checkpoint with the BTCV setup; ``nnunet``: a model folder
trained by :mod:`medlossy.nnunet`. Weights are never downloaded: the code loads a file.
"""
