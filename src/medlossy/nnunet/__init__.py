"""The nnU-Net v2 backend: medlossy drives nnU-Net's own command-line entry points.

Every run has its own ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` under the
model folder, so runs never see each other's datasets or plans. nnU-Net is an optional
dependency: ``pip install 'medlossy[nnunet]'``.
"""
