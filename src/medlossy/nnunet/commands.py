"""nnU-Net v2 in child processes, each with a per-run environment and a log file.

    nnUNetv2_plan_and_preprocess -d ID -c CONFIG --verify_dataset_integrity -np N
    nnUNetv2_extract_fingerprint / nnUNetv2_move_plans_between_datasets / nnUNetv2_preprocess
                                  (the "reuse the x1 plans" control)
    python -m medlossy.nnunet.worker train|predict ...   (medlossy's trainer, see worker.py)

nnU-Net's commands run through ``python -m medlossy.nnunet.launch``, which registers the
store reader first, so datasets whose images are stores (``--layout stores``) plan and
preprocess like decoded ones (see ``store_io``).

Subprocesses rather than imports: nnU-Net reads its folders from the environment when its
modules are imported, and spawns its own worker processes; a child process per step keeps
both contained, and its output goes to a log file.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from medlossy.errors import MedlossyError
from medlossy.orphans import guarded_command

#: After `pip install torch==2.13.0`; the extra keeps that torch (see pyproject.toml).
INSTALL_HINT = "pip install 'medlossy[nnunet]' (or: make install)"
ENTRY_POINTS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_extract_fingerprint",
                "nnUNetv2_move_plans_between_datasets", "nnUNetv2_preprocess")
PLANS = "nnUNetPlans"
LAUNCHER = "medlossy.nnunet.launch"
#: The last line of a medlossy error's traceback, in a log: the cause, where nnU-Net's own
#: message names only its background workers ("One or more background workers are no
#: longer alive").
_MEDLOSSY_ERROR = re.compile(r"^medlossy\.errors\.\w+: (.+)$")
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_.\-]+)$")


def find_command(name: str) -> str:
    """Path of an nnU-Net entry point: next to this Python first (its venv), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise MedlossyError(None, f"nnU-Net v2 is not installed ({name} not found); install "
                                  f"it with: {INSTALL_HINT}")
    return found


def nnunet_command(name: str) -> list[str]:
    """The command line that runs nnU-Net's entry point ``name`` with the store reader
    registered (``medlossy.nnunet.launch``)."""
    find_command(name)  # a missing nnU-Net is named as such, not as a launch failure
    return [sys.executable, "-m", LAUNCHER, name]


def require_nnunet() -> None:
    """Fail early, before any work, when nnU-Net or one of its entry points is missing."""
    for module in ("nnunetv2", "dynamic_network_architectures", "batchgeneratorsv2"):
        if importlib.util.find_spec(module) is None:
            raise MedlossyError(None, f"nnU-Net v2 is not installed ({module} missing); "
                                      f"install it with: {INSTALL_HINT}")
    for name in ENTRY_POINTS:
        find_command(name)


def dataset_id(folder: str | os.PathLike[str]) -> tuple[int, str]:
    """(id, full name) of an nnU-Net raw dataset folder named DatasetXXX_Name."""
    folder = Path(folder)
    match = _DATASET_NAME.match(folder.name)
    if match is None:
        raise MedlossyError(folder, "nnU-Net needs a dataset folder named DatasetXXX_Name "
                                    "(XXX = three-digit id), e.g. Dataset812_AMOS_r20")
    return int(match.group(1)), folder.name


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when this Python sees a GPU, else "cpu"."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise MedlossyError(None, f"unknown device {device!r} (cpu, cuda or auto)")
    return device


@dataclass(frozen=True)
class NnunetFolders:
    """The three folders nnU-Net works in: results and logs under one run folder, raw and
    preprocessed there too or under ``shared`` (preprocessing that several units reuse)."""

    root: Path
    shared: Path | None = None

    @property
    def raw(self) -> Path:
        return (self.shared or self.root) / "raw"

    @property
    def preprocessed(self) -> Path:
        return (self.shared or self.root) / "preprocessed"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def create(self) -> NnunetFolders:
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def environment(self) -> dict[str, str]:
        """This process's environment with nnU-Net's folders pointing here.

        Data-augmentation workers default to the cores less one (nnU-Net would otherwise
        guess from a table of its developers' host names); a value the user set is kept.
        """
        environment = dict(os.environ)
        environment.update(nnUNet_raw=str(self.raw.resolve()),
                           nnUNet_preprocessed=str(self.preprocessed.resolve()),
                           nnUNet_results=str(self.results.resolve()))
        environment.setdefault("nnUNet_n_proc_DA", str(max(1, min(12, (os.cpu_count() or 2) - 1))))
        return environment

    def link_dataset(self, dataset_folder: str | os.PathLike[str]) -> Path:
        """Make the raw dataset visible as raw/DatasetXXX_Name (a symlink; a copy where
        symlinks are not allowed); returns that path."""
        source = Path(dataset_folder).resolve()
        identifier, name = dataset_id(source)
        self.raw.mkdir(parents=True, exist_ok=True)
        for other in self.raw.glob(f"Dataset{identifier:03d}_*"):
            # nnU-Net refuses an id that two folders share; the run holds one dataset per id.
            if other.name != name or (other.is_symlink() and other.resolve() != source):
                _remove(other)
        target = self.raw / name
        if not target.exists() and not target.is_symlink():
            try:
                target.symlink_to(source, target_is_directory=True)
            except OSError:
                shutil.copytree(source, target)
        return target

    def trained_folder(self, name: str, config: str, trainer: str) -> Path:
        return self.results / name / f"{trainer}__{PLANS}__{config}"

    def plans(self, name: str) -> Path:
        return self.preprocessed / name / f"{PLANS}.json"

    def splits(self, name: str) -> Path:
        return self.preprocessed / name / "splits_final.json"


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def run_logged(arguments: list[str], environment: dict[str, str], log: Path, *,
               quiet: bool = False) -> None:
    """Run one nnU-Net command; its output goes to ``log`` (and to stderr unless quiet).

    Raises:
        MedlossyError: naming the log, when the command fails, with the first medlossy
            error the log holds (a store that a worker could not read), else nnU-Net's last
            lines.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=8)
    cause: str | None = None
    name = Path(arguments[0]).name
    if arguments[1:2] == ["-m"]:  # python -m MODULE ...: name the module, or nnU-Net's command
        name = arguments[3] if arguments[2] == LAUNCHER else arguments[2]
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(arguments)}\n")
        handle.flush()
        # guarded: nnU-Net (training for hours) must not outlive a killed medlossy
        process = subprocess.Popen(guarded_command(arguments), env=environment,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            assert process.stdout is not None
            for line in process.stdout:
                handle.write(line)
                if line.strip():
                    tail.append(line.strip())
                if cause is None and (found := _MEDLOSSY_ERROR.match(line)):
                    cause = found.group(1).strip()
                if not quiet:
                    sys.stderr.write(line)
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
    if code != 0:
        last = cause or " | ".join(list(tail)[-3:])
        raise MedlossyError(log, f"{name} failed (exit {code}): {last}")


def plan_and_preprocess(folders: NnunetFolders, identifier: int, config: str, *,
                        processes: int | None = None, quiet: bool = False) -> None:
    """Fingerprint, plan and preprocess one dataset for one configuration."""
    processes = processes or max(1, min(8, os.cpu_count() or 1))
    run_logged([*nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(identifier),
                "-c", config, "--verify_dataset_integrity", "-np", str(processes)],
               folders.environment(), folders.logs / "plan_and_preprocess.log",
               quiet=quiet)


def move_plans(folders: NnunetFolders, source: int, target: str, config: str, *,
               processes: int | None = None, quiet: bool = False) -> None:
    """Preprocess dataset ``target`` (DatasetXXX_Name) with the plans nnU-Net made for
    ``source`` (planned already): fingerprint the target, copy the source's plans and the
    target's dataset.json (what planning would have copied), preprocess."""
    identifier, _ = dataset_id(target)
    processes = processes or max(1, min(8, os.cpu_count() or 1))
    environment, log = folders.environment(), folders.logs / "plan_and_preprocess.log"
    run_logged([*nnunet_command("nnUNetv2_extract_fingerprint"), "-d", str(identifier), "-np",
                str(processes), "--verify_dataset_integrity"], environment, log, quiet=quiet)
    run_logged([*nnunet_command("nnUNetv2_move_plans_between_datasets"), "-s", str(source),
                "-t", str(identifier), "-sp", PLANS, "-tp", PLANS], environment, log,
               quiet=quiet)
    shutil.copyfile(folders.raw / target / "dataset.json",
                    folders.preprocessed / target / "dataset.json")
    run_logged([*nnunet_command("nnUNetv2_preprocess"), "-d", str(identifier), "-plans_name",
                PLANS, "-c", config, "-np", str(processes)], environment, log, quiet=quiet)


def worker(arguments: list[str], folders: NnunetFolders, log: str, *,
           quiet: bool = False, environment: dict[str, str] | None = None) -> None:
    """Run ``python -m medlossy.nnunet.worker ARGUMENTS`` in nnU-Net's environment."""
    run_logged([sys.executable, "-m", "medlossy.nnunet.worker", *arguments],
               {**folders.environment(), **(environment or {})}, folders.logs / log,
               quiet=quiet)
