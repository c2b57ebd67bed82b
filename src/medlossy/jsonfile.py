"""JSON documents: read with one-line errors, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError


def read_json(path: str | os.PathLike[str], missing: str) -> Any:
    """The parsed document; ``missing`` is the problem to report when the file is absent."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MedlossyError(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MedlossyError(path, f"not valid JSON ({error})") from None


def write_json(path: str | os.PathLike[str], document: Any) -> None:
    """Write ``document`` as indented JSON; the file appears whole or not at all."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
