"""Real brain MR that a package registry ships: Colin27 from Debian's mricron-data.

Debian's ``mricron-data`` (MRIcron's templates, Debian main, BSD-3-clause per the package's
debian/copyright) holds ``ch2.nii.gz``: the MNI's "Colin27" T1, one real person scanned 27
times and averaged (Holmes et al., J. Comput. Assist. Tomogr. 1998), 181 x 217 x 181 voxels
of 1 mm, and ``ch2bet.nii.gz``, the same image brain-extracted with FSL's BET. No package on
PyPI, npm or Debian ships a second real subject's T1/T2 volume (the others are templates
averaged over many people, 2D slices, or tiny test crops); see docs/data.md.

Fetched like the demo's archive (``medlossy.data.demo``): the pinned package is downloaded
once with the registry's own client (``apt-get download``) into the cache, its sha256
checked, and laid out as an nnU-Net raw dataset ``Dataset902_BrainMR`` with channel "T1"
and, with ``labels=True``, the label "brain" from the BET image (a tool's mask, not a manual
one).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.atomic import atomic_output
from medlossy.checksums import sha256_file
from medlossy.data.demo import cache_directory, pinned_download
from medlossy.errors import MedlossyError
from medlossy.io.nifti import write_nifti
from medlossy.volume import Volume

PACKAGE = "mricron-data"
VERSION = "1.2.20211006+dfsg-4"
ARCHIVE = f"{PACKAGE}_{VERSION}_all.deb"
SHA256 = "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f"
#: sha256 of the two files used, as the package holds them.
FILES = {"ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
         "ch2bet.nii.gz": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1"}
_MEMBER = "./usr/share/mricron/templates/"
DATASET = "Dataset902_BrainMR"
CASE = "colin27"
_DESCRIPTION = (f"Colin27 (ch2.nii.gz), one real adult's T1 (27 scans averaged), from Debian's "
                f"{PACKAGE} {VERSION} (BSD-3-clause). Label 'brain': FSL BET's mask of it "
                "(ch2bet.nii.gz), not a manual annotation.")


def fetch_package(cache: str | os.PathLike[str] | None = None) -> Path:
    """The verified .deb, downloaded with ``apt-get download`` on first use."""
    def apt_download(scratch: Path) -> Path:
        os.chmod(scratch, 0o777)  # apt drops to its own user for the download
        try:
            result = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"],
                                    cwd=scratch, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise MedlossyError(ARCHIVE, "apt-get is not available: the brain MR comes from "
                                         "Debian's mricron-data package") from None
        downloaded = scratch / ARCHIVE.replace("+", "%2b")
        downloaded = downloaded if downloaded.exists() else scratch / ARCHIVE
        if result.returncode != 0 or not downloaded.exists():
            raise MedlossyError(ARCHIVE, "apt-get could not download the package: "
                                + (result.stderr.strip().splitlines() or ["no output"])[-1])
        return downloaded

    return pinned_download(cache_directory(cache), ARCHIVE, SHA256, "package", apt_download)


def _data_tar(archive: Path) -> tarfile.TarFile:
    """The package's data.tar.xz (a .deb is an ar archive: 60-byte headers, even padding)."""
    blob = archive.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise MedlossyError(archive, "not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(blob):
        header = blob[offset:offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        if name.startswith("data.tar"):
            member = blob[offset + 60:offset + 60 + size]
            return tarfile.open(fileobj=io.BytesIO(member), mode="r:*")
        offset += 60 + size + size % 2
    raise MedlossyError(archive, "holds no data.tar")


def extract(archive: Path, cache: Path) -> Path:
    """Unpack ch2 and ch2bet once (checked); returns their folder."""
    root = cache / f"{PACKAGE}-{VERSION}"
    if all((root / name).exists() for name in FILES):
        return root
    with atomic_output(root) as scratch, _data_tar(archive) as tar:
        scratch.mkdir(parents=True)
        for name, digest in FILES.items():
            source = tar.extractfile(_MEMBER + name)
            if source is None:
                raise MedlossyError(archive, f"holds no {name}")
            (scratch / name).write_bytes(source.read())
            if sha256_file(scratch / name) != digest:
                raise MedlossyError(archive, f"{name}: sha256 mismatch")
    return root


def prepare_brain_mr(out: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None,
                     *, labels: bool = False) -> Path:
    """Fetch (once) and lay out ``out``/Dataset902_BrainMR; returns its folder."""
    folder = Path(out) / DATASET
    if (folder / "dataset.json").exists():
        return folder
    root = extract(fetch_package(cache), cache_directory(cache))
    image = nib.load(root / "ch2.nii.gz")
    # nnU-Net keeps unlabelled cases in imagesTs
    images = "imagesTr" if labels else "imagesTs"
    with atomic_output(folder) as temporary:
        (temporary / images).mkdir(parents=True)
        write_nifti(Volume(np.asarray(image.dataobj), image.affine, "MR"),
                    temporary / images / f"{CASE}_0000.nii.gz")
        names = {"background": 0}
        if labels:
            brain = np.asarray(nib.load(root / "ch2bet.nii.gz").dataobj) > 0
            (temporary / "labelsTr").mkdir()
            write_nifti(Volume(brain.astype(np.uint8), image.affine),
                        temporary / "labelsTr" / f"{CASE}.nii.gz")
            names["brain"] = 1
        document = {"channel_names": {"0": "T1"}, "labels": names,
                    "numTraining": int(labels),
                    "file_ending": ".nii.gz", "name": DATASET.split("_", 1)[1],
                    "description": _DESCRIPTION, "licence": "BSD-3-clause",
                    "reference": f"https://packages.debian.org/bookworm/{PACKAGE}",
                    "synthetic": False}
        (temporary / "dataset.json").write_text(json.dumps(document, indent=2) + "\n")
    return folder
