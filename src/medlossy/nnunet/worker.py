"""nnU-Net training and prediction with medlossy's trainer, run as a child process.

    python -m medlossy.nnunet.worker train DATASET CONFIG FOLD --epochs E --iterations I ...
    python -m medlossy.nnunet.worker predict MODEL_FOLDER FOLD INPUT OUTPUT ...
    python -m medlossy.nnunet.worker convert DATASET CONFIG lossless|xR --codec htj2k ...

nnU-Net's own ``nnUNetv2_train`` / ``nnUNetv2_predict`` find a trainer class by importing
every module of nnU-Net's trainer package, some of which need timm and torchvision (absent
beside a CPU torch, see the Makefile); they also cannot find a trainer that lives outside
nnU-Net (``medlossy.nnunet.launch`` registers it for a user's own nnU-Net commands). This
worker builds ``MedlossyTrainer`` directly and predicts through nnU-Net's
``nnUNetPredictor.manual_initialization``, which is what ``nnUNetv2_predict`` does after the
class lookup. nnU-Net reads its folders (nnUNet_raw, nnUNet_preprocessed, nnUNet_results)
from the environment the parent sets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from medlossy.nnunet.store_io import register

# At import, so that the processes nnU-Net spawns from this one (they import it again as
# their main module) find the store reader too (see ``store_io``).
register()

TRAINING_FILE = "medlossy-training.json"


def _device(name: str) -> torch.device:
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_num_threads(1)  # nnU-Net's choice: more CPU threads do not help on a GPU
        return torch.device("cuda")
    torch.set_num_threads(_cpu_threads())
    return torch.device("cpu")


def _cpu_threads() -> int:
    """nnU-Net's choice on CPU, every core, unless OMP_NUM_THREADS limits the threads."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):  # unset, or a per-level list such as "4,2"
        return os.cpu_count() or 1


def _peak_memory(device: torch.device) -> float | None:
    """Peak GPU memory PyTorch allocated in this process, GB (None on CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)


def train(arguments: argparse.Namespace) -> None:
    from medlossy.nnunet.trainer import MedlossyTrainer

    base = Path(os.environ["nnUNet_preprocessed"]) / arguments.dataset  # noqa: SIM112
    plans = json.loads((base / f"{arguments.plans}.json").read_text())
    plans["continue_training"] = True  # nnU-Net's trainer expects the flag in the plans
    dataset_json = json.loads((base / "dataset.json").read_text())
    trainer = MedlossyTrainer(plans=plans, configuration=arguments.configuration,
                              fold=arguments.fold, dataset_json=dataset_json,
                              device=_device(arguments.device))
    trainer.configure(epochs=arguments.epochs, iterations_per_epoch=arguments.iterations,
                      validation_iterations=arguments.validation_iterations,
                      splits_file=arguments.splits,
                      preprocessed_folder=arguments.preprocessed_folder)
    folder = Path(trainer.output_folder)
    latest = folder / "checkpoint_latest.pth"
    if latest.exists():
        trainer.load_checkpoint(str(latest))
    started = time.perf_counter()
    first_epoch = trainer.current_epoch
    trainer.run_training()
    seconds = time.perf_counter() - started
    iterations = (trainer.current_epoch - first_epoch) * trainer.num_iterations_per_epoch
    (folder / TRAINING_FILE).write_text(json.dumps({
        "epochs": trainer.current_epoch, "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "validation_iterations": trainer.num_val_iterations_per_epoch,
        "seconds_this_run": round(seconds, 2), "iterations_this_run": iterations,
        "iterations_per_second": round(iterations / seconds, 4) if seconds else None,
        "patch_size": list(trainer.configuration_manager.patch_size),
        "batch_size": trainer.configuration_manager.batch_size,
        "peak_gpu_memory_gb": _peak_memory(trainer.device),
        "preprocessed_folder": arguments.preprocessed_folder,
        "device": str(trainer.device), "torch": torch.__version__}, indent=2) + "\n")


def convert(arguments: argparse.Namespace) -> None:
    """nnU-Net's preprocessed folder of one configuration -> stores (see ``preprocessed``)."""
    from medlossy.nnunet.preprocessed import convert_folder
    from medlossy.nnunet.storage import parse_storage

    base = Path(os.environ["nnUNet_preprocessed"]) / arguments.dataset  # noqa: SIM112
    plans = json.loads((base / f"{arguments.plans}.json").read_text())
    storage = parse_storage(arguments.storage, arguments.codec, arguments.tile)
    source = plans["configurations"][arguments.configuration]["data_identifier"]
    started = time.perf_counter()
    marker = convert_folder(base / source, base / storage.folder(source), plans,
                            arguments.configuration, storage, workers=arguments.workers)
    stored_as = [channel["stored_as"] for channels in marker["stored"].values()
                 for channel in channels]
    others = [name for name in stored_as if name != storage.name]
    print(f"medlossy: {marker['cases']} cases as {storage.name} {storage.codec} stores in "
          f"{time.perf_counter() - started:.1f} s: {marker['image_bytes']} bytes of images "
          f"(blosc2: {marker['blosc2_image_bytes']})"
          + (f"; {len(others)} of {len(stored_as)} stores otherwise (lossless where smaller, "
             "else the closest ratio reached: see the folder's JSON)" if others else ""))


def predict(arguments: argparse.Namespace) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medlossy.nnunet.trainer import MedlossyTrainer

    folder = Path(arguments.model)
    checkpoint = torch.load(folder / f"fold_{arguments.fold}" / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    configuration = plans.get_configuration(checkpoint["init_args"]["configuration"])
    network = MedlossyTrainer.build_network_architecture(
        plans, configuration, determine_num_input_channels(plans, configuration, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    device = _device(arguments.device)
    predictor = nnUNetPredictor(tile_step_size=arguments.step_size, use_gaussian=True,
                                use_mirroring=arguments.mirroring,
                                perform_everything_on_device=device.type == "cuda",
                                device=device, allow_tqdm=False)
    predictor.manual_initialization(network, plans, configuration,
                                    [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"],
                                    checkpoint.get("inference_allowed_mirroring_axes"))
    started = time.perf_counter()
    predictor.predict_from_files(str(arguments.input), str(arguments.output),
                                 save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=arguments.processes,
                                 num_processes_segmentation_export=arguments.processes)
    seconds = time.perf_counter() - started
    print(f"medlossy: predicted in {seconds:.1f} s on {device}, peak GPU memory "
          f"{_peak_memory(device)} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medlossy.nnunet.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    training = sub.add_parser("train")
    training.add_argument("dataset", help="DatasetXXX_Name under nnUNet_preprocessed")
    training.add_argument("configuration")
    training.add_argument("fold", type=int)
    training.add_argument("--plans", default="nnUNetPlans")
    training.add_argument("--epochs", type=int, required=True)
    training.add_argument("--iterations", type=int, required=True)
    training.add_argument("--validation-iterations", type=int, default=50)
    training.add_argument("--splits", required=True, help="splits_final.json of the unit")
    training.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    training.add_argument("--preprocessed-folder", default=None,
                          help="folder of stores under the dataset's preprocessed folder "
                               "(default: nnU-Net's blosc2 files)")
    training.set_defaults(handler=train)
    conversion = sub.add_parser("convert")
    conversion.add_argument("dataset", help="DatasetXXX_Name under nnUNet_preprocessed")
    conversion.add_argument("configuration")
    conversion.add_argument("storage", help="lossless or xR")
    conversion.add_argument("--codec", default="htj2k")
    conversion.add_argument("--tile", type=int, default=128)
    conversion.add_argument("--plans", default="nnUNetPlans")
    conversion.add_argument("--workers", type=int, default=1)
    conversion.set_defaults(handler=convert)
    prediction = sub.add_parser("predict")
    prediction.add_argument("model", help="results/DatasetXXX/TRAINER__PLANS__CONFIG")
    prediction.add_argument("fold", type=int)
    prediction.add_argument("input", help="folder of CASE_XXXX images")
    prediction.add_argument("output")
    prediction.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    prediction.add_argument("--step-size", type=float, default=0.5)
    prediction.add_argument("--no-mirroring", dest="mirroring", action="store_false")
    prediction.add_argument("--processes", type=int, default=1)
    prediction.set_defaults(handler=predict)
    arguments = parser.parse_args(argv)
    arguments.handler(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
