"""The study's nnU-Net trainer: nnU-Net's own recipe with the configured budget and split.

``MedlossyTrainer`` subclasses ``nnUNetTrainer`` and keeps its recipe, which is the paper's:
SGD with Nesterov momentum 0.99, initial learning rate 1e-2 with poly decay (exponent 0.9),
Dice + cross-entropy with deep supervision, a third of patches oversampled on foreground. It
pins those values (so a new nnU-Net default cannot change the study silently) and changes
only what the study configures: epochs x iterations per epoch, validation iterations, the
study's own split (a ``splits_final.json`` of the unit, so every backend tests on the same
cases), and a checkpoint every epoch written atomically (a killed unit resumes). With
``preprocessed_folder`` it trains from nnU-Net's preprocessed cases kept as medlossy stores
(``medlossy.nnunet.preprocessed``) instead of nnU-Net's blosc2 files.

nnU-Net saves the constructor's arguments in every checkpoint, so the constructor keeps
nnU-Net's signature; the budget is set with :meth:`MedlossyTrainer.configure` before
``initialize``. Imported only in processes that run nnU-Net (``medlossy.nnunet.worker``, and
``medlossy.nnunet.launch`` for nnU-Net's own commands), after nnU-Net's folder variables are
set.

How nnU-Net finds it by name (``nnUNetv2_predict -tr MedlossyTrainer``). nnU-Net looks a
trainer up by importing the modules of its own trainer package one by one until one holds
the name: its base module first, then every variant, some of which need timm (absent here);
a trainer outside the package is not found at all. :func:`register` puts the class on the
base module, which the search imports first, so it is found there before any variant is
imported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

LEARNING_RATE = 1e-2
MOMENTUM = 0.99
POLY_EXPONENT = 0.9
WEIGHT_DECAY = 3e-5


class MedlossyTrainer(nnUNetTrainer):
    """nnUNetTrainer with the study's budget, split and atomic per-epoch checkpoints."""

    def configure(self, *, epochs: int, iterations_per_epoch: int, validation_iterations: int,
                  splits_file: str | os.PathLike[str],
                  preprocessed_folder: str | None = None) -> None:
        """The study's budget and split; call before ``initialize``. ``preprocessed_folder``:
        a folder of stores beside nnU-Net's preprocessed one (None: nnU-Net's blosc2)."""
        self.num_epochs = int(epochs)
        self.num_iterations_per_epoch = int(iterations_per_epoch)
        self.num_val_iterations_per_epoch = int(validation_iterations)
        self.initial_lr = LEARNING_RATE
        self.weight_decay = WEIGHT_DECAY
        self.enable_deep_supervision = True
        self.save_every = 1
        self.splits_file = Path(splits_file)
        self.medlossy_folder = preprocessed_folder
        if preprocessed_folder is not None:
            self.preprocessed_dataset_folder = os.path.join(
                self.preprocessed_dataset_folder_base, preprocessed_folder)

    def initialize(self) -> None:
        """nnU-Net's, then the dataset class of the stores where the cases are stores
        (nnU-Net infers its class from the folder's file endings)."""
        super().initialize()
        if getattr(self, "medlossy_folder", None) is not None:
            from medlossy.nnunet.preprocessed import MedlossyStoreDataset

            self.dataset_class = MedlossyStoreDataset
            self.print_to_log_file(f"medlossy: training cases read by MedlossyStoreDataset "
                                   f"from {self.preprocessed_dataset_folder}")

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=MOMENTUM,
                                    nesterov=True)
        scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                    exponent=POLY_EXPONENT)
        return optimizer, scheduler

    def do_split(self) -> tuple[list[str], list[str]]:
        """The study's fold from the unit's splits_final.json (nnU-Net's format)."""
        splits = json.loads(self.splits_file.read_text())
        fold = splits[int(self.fold)]
        self.print_to_log_file(f"medlossy split {self.splits_file}: fold {self.fold}, "
                               f"{len(fold['train'])} training and {len(fold['val'])} test cases")
        return list(fold["train"]), list(fold["val"])

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary file first: a kill mid-write leaves
        the previous checkpoint intact."""
        temporary = f"{filename}.partial"
        super().save_checkpoint(temporary)
        if os.path.exists(temporary):
            os.replace(temporary, filename)


def register() -> None:
    """Make nnU-Net's lookup of a trainer by name find ``MedlossyTrainer`` in this process
    (see the module docstring); calling it again changes nothing."""
    setattr(sys.modules[nnUNetTrainer.__module__], MedlossyTrainer.__name__, MedlossyTrainer)
