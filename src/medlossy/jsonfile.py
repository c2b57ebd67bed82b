"""Read a JSON document that a user or an earlier step wrote, with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
