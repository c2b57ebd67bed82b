"""Store links: a small file that stands for a store where a tool lists image *files*.

A store is a folder (``CASE_0000.zarr``), but nnU-Net lists a dataset's images as files
ending in its ``file_ending`` and checks each with ``os.path.isfile``. A stores-only sweep
therefore puts a link in ``imagesTr`` instead of a decoded copy::

    imagesTr/CASE_0000.mlstore     {"medlossy_store": "../../../stores/r20/CASE_0000.zarr"}

The path is relative to the link's real location (symlinks to it are followed first), so a
moved sweep, or a dataset folder registered in ``$nnUNet_raw`` by a symlink, still finds its
stores. The link costs a hundred bytes; the store stays the only copy of the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medlossy.errors import MedlossyError
from medlossy.jsonfile import write_json

#: The ending of a link file (nnU-Net's ``file_ending`` of a stores-only dataset).
LINK_ENDING = ".mlstore"
#: The nnU-Net reader of links (``medlossy.nnunet.store_io``), by the name dataset.json's
#: ``overwrite_image_reader_writer`` gives it.
NNUNET_READER = "MedlossyStoreIO"
_KEY = "medlossy_store"


def write_store_link(link: str | os.PathLike[str], store: str | os.PathLike[str]) -> None:
    """Write ``link`` (atomically) pointing at ``store``, relative to the link's folder."""
    link = Path(link)
    target = os.path.relpath(Path(store).absolute(), link.absolute().parent)
    write_json(link, {_KEY: Path(target).as_posix()})


def read_store_link(link: str | os.PathLike[str]) -> Path:
    """The store a link file names (it need not exist yet); errors name the link."""
    real = Path(link).resolve()
    try:
        target = json.loads(real.read_text())[_KEY]
    except FileNotFoundError:
        raise MedlossyError(link, "no such store link") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise MedlossyError(link, f"not a medlossy store link (a JSON file with "
                                  f"{_KEY!r})") from None
    return real.parent / target


def is_store_link(path: str | os.PathLike[str]) -> bool:
    return str(path).endswith(LINK_ENDING)
