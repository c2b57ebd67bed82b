"""What ``medlossy codecs`` lists: every registered codec, installed or not, and its modes."""

from __future__ import annotations

from typing import Any

from medlossy.codecs.base import codec_names, codec_type

#: How the command names each target mode (the compress option that asks for it).
MODE_OPTIONS = {"ratio": "--ratio", "psnr": "--psnr", "max_error": "--max-error",
                "lossless": "--lossless"}


def catalog() -> list[dict[str, Any]]:
    """One entry per codec: name, installed, chunk kind, modes, hardware, library, extra."""
    entries = []
    for name in codec_names():
        kind = codec_type(name)
        entries.append({
            "name": name,
            "installed": bool(kind.available),
            "chunk": "slice" if kind.block_depth == 1 else f"3D block of {kind.block_depth} "
                                                             "slices",
            "modes": [MODE_OPTIONS[m] for m in MODE_OPTIONS if m in kind.modes],
            "hardware": kind.hardware,
            "library": kind.library,
            "extra": kind.extra,
        })
    return entries
