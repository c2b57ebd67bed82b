"""Any trained nnU-Net v2 model folder as a pretrained model.

The folder nnU-Net writes (``.../DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres``
with ``dataset.json``, ``plans.json`` and ``fold_*/checkpoint_final.pth``: a
TotalSegmentator model, a user's own), or a model folder ``medlossy train --backend nnunet``
wrote. Its classes are dataset.json's label names; its input, the channel name (CT, or an
MR contrast) and the configuration's target spacing (images from a third to three times
that voxel size are accepted: nnU-Net resamples). It predicts with one fold (the first
trained one, or the medlossy model's fold) and, like the other plug-ins' fast modes, without
test-time mirroring, through medlossy's nnU-Net worker process (``medlossy.nnunet.worker``:
it needs no trainer class lookup, so nnU-Net's optional timm/torchvision are not needed).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError
from medlossy.io import read_volume, write_volume
from medlossy.pretrained.base import InputSpec, PretrainedModel, register_folder_model
from medlossy.volume import Volume

CHECKPOINT = "checkpoint_final.pth"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedlossyError(path, f"cannot read the model's description ({error})") from None


def _class_names(folder: Path, dataset: dict) -> tuple[str, ...]:
    labels = dataset.get("labels") or {}
    values = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise MedlossyError(folder / "dataset.json", f"label {name!r} is region-based or "
                                                         "not an integer: not supported")
        values[value] = str(name)
    foreground = sorted(v for v in values if v != 0)
    if foreground != list(range(1, len(foreground) + 1)):
        raise MedlossyError(folder / "dataset.json", f"label values {foreground} are not "
                                                     "1..n")
    return tuple(values[v] for v in foreground)


class NnUNetFolder(PretrainedModel):
    """A trained nnU-Net v2 model folder; ``fold`` None: the first trained fold."""

    name = "nnunet"
    task = "segmentation"
    requirement = "pip install 'medlossy[nnunet]'"
    mode = "one fold, no test-time mirroring"

    def __init__(self, folder: Path, *, fold: int | None = None, device: str = "auto") -> None:
        self.folder = Path(folder)
        dataset = _read(self.folder / "dataset.json")
        plans = _read(self.folder / "plans.json")
        trained = sorted(int(p.parent.name.removeprefix("fold_"))
                         for p in self.folder.glob(f"fold_*/{CHECKPOINT}")
                         if p.parent.name.removeprefix("fold_").isdigit())
        if not trained or (fold is not None and fold not in trained):
            raise MedlossyError(self.folder, f"no fold_{'*' if fold is None else fold}/"
                                             f"{CHECKPOINT}: the model is not trained")
        self.fold = trained[0] if fold is None else fold
        self.device = device
        self.name = self.folder.parent.name if self.folder.name.count("__") == 2 else \
            self.folder.name
        self.task = f"{dataset.get('name', self.name)} segmentation"
        self.classes = _class_names(self.folder, dataset)
        channels = dataset.get("channel_names") or dataset.get("modality") or {}
        if len(channels) != 1:
            raise MedlossyError(self.folder / "dataset.json", f"the model takes {len(channels)} "
                                                              "channels; only one is supported")
        channel = str(next(iter(channels.values())))
        configuration = self.folder.name.split("__")[-1]
        spacing = ((plans.get("configurations") or {}).get(configuration) or {}).get("spacing")
        spacing = spacing or plans.get("original_median_spacing_after_transp") or [1.0]
        low, high = min(spacing) / 3, max(spacing) * 3
        self.expects = (InputSpec("CT", (), "any (nnU-Net reads the image as stored)", (low, high))
                        if channel.upper() == "CT" else
                        InputSpec("MR", (channel.upper(),) if channel.upper() not in
                                  ("MR", "MRI", "0") else (),
                                  "any (nnU-Net reads the image as stored)", (low, high)))

    def predict(self, volume: Volume) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="medlossy-nnunet-") as scratch:
            image = Path(scratch) / "case_0000.nii.gz"
            write_volume(volume, image)
            self.predict_cases({"case": image}, Path(scratch) / "out")
            return np.asarray(read_volume(Path(scratch) / "out" / "case.nii.gz").array)

    def predict_cases(self, cases: Mapping[str, Path], out: Path, *, ending: str = ".nii.gz",
                      channel: str = "", show_progress: bool = False,
                      description: str = "") -> Path:
        """All cases in one nnU-Net process (loading the network once), after checking each."""
        from medlossy.nnunet import commands

        commands.require_nnunet()
        for image in cases.values():
            self.check(read_volume(image, self.expects.modality), image, channel)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".medlossy-nnunet-", dir=out.parent) as scratch:
            inputs = Path(scratch) / "input"
            inputs.mkdir()
            for name, image in cases.items():
                (inputs / f"{name}_0000{ending}").symlink_to(Path(image).resolve())
            folders = commands.NnunetFolders(Path(scratch) / "nnunet")
            with atomic_output(out) as temporary:
                temporary.mkdir(parents=True)
                commands.worker(["predict", str(self.folder.resolve()), str(self.fold),
                                 str(inputs), str(temporary), "--device",
                                 commands.resolve_device(self.device), "--no-mirroring"],
                                folders, "predict.log", quiet=not show_progress)
                for extra in temporary.iterdir():
                    if not extra.name.endswith(ending):
                        extra.unlink()
        return out


def find_folder_model(folder: Path, device: str) -> NnUNetFolder | None:
    """The model in ``folder``: nnU-Net's trained folder, or a medlossy nnU-Net model folder."""
    from medlossy.nnunet.run import MODEL_FILE, _results, read_model

    if (folder / MODEL_FILE).is_file():
        model = read_model(folder)
        return NnUNetFolder(_results(folder, model), fold=int(model["fold"]), device=device)
    if (folder / "dataset.json").is_file() and (folder / "plans.json").is_file():
        return NnUNetFolder(folder, device=device)
    return None


register_folder_model(find_folder_model)
