"""Predict with a trained model: same preprocessing, sliding windows, back to the image grid."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.io.nifti import write_nifti
from medlossy.terminal import progress_bar
from medlossy.train.loop import DESCRIPTION_FILE, MODEL_FILE, resolve_device
from medlossy.train.network import build_network
from medlossy.train.precision import uses_bfloat16
from medlossy.train.preprocessing import (
    LoadedCase,
    load_case,
    normalise,
    resample_image,
    resampled_shape,
)
from medlossy.volume import Volume


@dataclass
class TrainedModel:
    description: dict
    network: torch.nn.Module
    device: torch.device
    #: Predict under bfloat16 autocast (the model's ``precision`` on this device).
    bfloat16: bool = False

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.description["preprocessing"]["patch_size"])


def load_model(folder: str | Path, device: str = "auto") -> TrainedModel:
    folder = Path(folder)
    try:
        description = json.loads((folder / DESCRIPTION_FILE).read_text())
    except FileNotFoundError:
        raise MedlossyError(folder, f"not a trained model ({DESCRIPTION_FILE} missing)") from None
    if description.get("backend") != "monai":
        raise MedlossyError(folder, f"backend {description.get('backend')!r} models are "
                                    "predicted with their own tool")
    resolved = resolve_device(device)
    network = build_network(description["network"])
    state = torch.load(folder / MODEL_FILE, map_location=resolved, weights_only=True)
    network.load_state_dict(state["network"])
    try:
        bfloat16 = uses_bfloat16(resolved, description.get("config", {}).get("precision",
                                                                             "auto"))
    except ValueError as error:
        raise MedlossyError(folder / DESCRIPTION_FILE, str(error)) from None
    return TrainedModel(description, network.to(resolved).eval(), resolved, bfloat16)


def _check_compatible(model: TrainedModel, dataset: RawDataset) -> None:
    channels = model.description["channel_names"]
    if {str(c) for c in dataset.channels} != set(channels):
        raise MedlossyError(dataset.root, f"has channels {dataset.channels}; the model was "
                                          f"trained on {sorted(channels)}")
    for channel in dataset.channels:
        trained = "CT" if str(channels[str(channel)]).upper() == "CT" else "MR"
        if dataset.channel_modality(channel) != trained:
            raise MedlossyError(dataset.root, f"channel {channel} is "
                                              f"{dataset.channel_modality(channel)}; the model "
                                              f"was trained on {trained} (normalisation differs)")


@torch.no_grad()
def predict_case(model: TrainedModel, case: LoadedCase) -> np.ndarray:
    """Label map (uint8) on the case's own grid."""
    preprocessing = model.description["preprocessing"]
    shape = resampled_shape(case.channels.shape[1:], case.spacing,
                             tuple(preprocessing["target_spacing"]))
    image = resample_image(normalise(case.channels, preprocessing["normalisation"]), shape)
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None].to(model.device)
    with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16,
                        enabled=model.bfloat16):
        logits = sliding_window_inference(tensor, model.patch_size, sw_batch_size=2,
                                          predictor=model.network, overlap=0.5,
                                          mode="gaussian")
    probabilities = torch.softmax(logits.float(), dim=1)
    if tuple(probabilities.shape[2:]) != tuple(case.channels.shape[1:]):
        probabilities = F.interpolate(probabilities, size=case.channels.shape[1:],
                                      mode="trilinear", align_corners=False)
    return probabilities.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)


def predict_dataset(model_folder: str | Path, dataset_folder: str | Path, out: str | Path, *,
                    cases: str = "test", device: str = "auto",
                    show_progress: bool = False) -> list[Path]:
    """Write CASE.nii.gz label maps for ``cases`` ("test": the model's held-out fold cases
    that the dataset has; "all": every case). Existing predictions are kept (resume)."""
    model = load_model(model_folder, device)
    dataset = open_raw_dataset(dataset_folder)
    _check_compatible(model, dataset)
    chosen = dataset.cases()
    if cases == "test":
        held_out = set(model.description["trained_on"]["test_cases"])
        chosen = [case for case in chosen if case.name in held_out]
    if not chosen:
        raise MedlossyError(dataset.root, f"none of the model's {cases} cases are in this "
                                          "dataset")
    written = []
    out = Path(out)
    for case in progress_bar(chosen, desc="predict", unit="case", show=show_progress):
        # the labels' ending: a stores-only dataset's images end in .mlstore, not its labels
        target = out / f"{case.name}{dataset.label_ending}"
        if not target.exists():
            loaded = load_case(dataset, case)
            labels = predict_case(model, loaded)
            with atomic_output(target) as temporary:
                write_nifti(Volume(labels, loaded.affine), temporary)
        written.append(target)
    return written
