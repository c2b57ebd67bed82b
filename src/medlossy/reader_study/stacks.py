"""A pair's scrollable stack, as 16-bit values for the browser's viewer to window itself.

Data flow: ``reader make`` decodes the chosen slice and ``half`` slices on each side of it
from both stores -> ``sixteen_bit`` picks one value <-> int16 mapping for the pair (from
the original, so it never depends on which side is compressed more) -> ``write_stack``
writes ``stacks/<id>.bin``: a fixed header, then one plane after another, (rows, columns)
little-endian int16 in the radiological view, left then right for each slice, slices in
``transfer_order`` (the pair's own first) -> the app serves the file in two parts
(``read_part``): part 1, the header and the pair's own slice (both sides), which the page
preloads and draws as the first view; part 2, the other slices, fetched once that view is
drawn -> the page's script windows the values into a canvas.

The header (``HEADER``, 128 bytes) holds the magic, the stack's size, the index of the
pair's own slice in it, the modality, the mapping (value = code * slope + intercept) and
five windows (width, level) in value units: the study's window, then the viewer's four
presets (CT: soft tissue, lung, bone, brain; MR: percentiles of the original slice). The
file's byte count depends on the stack's size alone, and every number in it is the same
for both sides: nothing in it tells which side is which.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlossy.atomic import atomic_output
from medlossy.reader_study.windows import (
    PRESETS,
    VIEWER_CT_PRESETS,
    VIEWER_MR_PERCENTILES,
    Window,
)

MAGIC = b"MLSTACK1"
#: magic, slices, rows, columns, index of the pair's slice, modality (0 CT, 1 MR or other),
#: then slope, intercept and five (width, level) windows.
HEADER = struct.Struct("<8s5I4x12d")
MODALITIES = {"CT": 0}
INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class StackHeader:
    slices: int
    rows: int
    columns: int
    centre: int
    modality: int
    slope: float
    intercept: float
    windows: tuple[tuple[float, float], ...]

    def pack(self) -> bytes:
        flat = [value for window in self.windows for value in window]
        return HEADER.pack(MAGIC, self.slices, self.rows, self.columns, self.centre,
                           self.modality, self.slope, self.intercept, *flat)

    @classmethod
    def unpack(cls, data: bytes) -> StackHeader:
        magic, *numbers = HEADER.unpack(data[:HEADER.size])
        if magic != MAGIC:
            raise ValueError("not a reader study stack")
        sizes, floats = numbers[:5], numbers[5:]
        windows = tuple(zip(floats[2::2], floats[3::2], strict=True))
        return cls(*sizes, floats[0], floats[1], windows)


def stack_range(slice_index: int, half: int, depth: int) -> range:
    """``2 half + 1`` consecutive slice indices around ``slice_index``, shifted to stay
    inside a volume of ``depth`` slices (fewer only when the volume is thinner), so every
    stack of a dataset has the same size."""
    count = min(2 * half + 1, depth)
    start = min(max(slice_index - half, 0), depth - count)
    return range(start, start + count)


def sixteen_bit(original: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) turning values into int16 codes for a pair.

    Integer data that fits int16 (CT in HU, most MR) is kept exactly (slope 1); anything
    else spans the original's range in 65,534 steps. Decided from the original alone.
    """
    low, high = float(np.min(original)), float(np.max(original))
    if np.array_equal(original, np.round(original)) and INT16.min <= low and high <= INT16.max:
        return 1.0, 0.0
    return max((high - low) / (INT16.max - INT16.min - 1), 1e-12), (low + high) / 2


def to_codes(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    codes = np.round((np.asarray(values, dtype=np.float64) - intercept) / slope)
    return np.clip(codes, INT16.min, INT16.max).astype("<i2")


def viewer_windows(modality: str, study_window: Window, original: np.ndarray
                   ) -> tuple[tuple[float, float], ...]:
    """The study's window and the four presets, as (width, level) in value units.

    MR (and other modalities without an absolute scale) get percentile windows of the
    original slice, the same numbers for both sides.
    """
    def from_bounds(low: float, high: float) -> tuple[float, float]:
        return max(high - low, 1e-6), (low + high) / 2

    window = study_window if modality == "CT" else Window("auto")
    first = from_bounds(*window.bounds(original))
    if modality == "CT":
        presets = [PRESETS[name] for name in VIEWER_CT_PRESETS]
    else:
        presets = [from_bounds(*np.percentile(original, bounds))
                   for bounds in VIEWER_MR_PERCENTILES]
    return (first, *presets)


def transfer_order(slices: int, centre: int) -> list[int]:
    """The order slices are stored in: nearest the pair's own slice first (ties: the lower
    index), so a viewer reading the file as it arrives can show the pair at once."""
    return sorted(range(slices), key=lambda index: (abs(index - centre), index))


def write_stack(path: Path, left: np.ndarray, right: np.ndarray, centre: int,
                modality: str, mapping: tuple[float, float],
                windows: Sequence[tuple[float, float]]) -> None:
    """Write the stack file of one pair (``left``/``right``: (slices, rows, columns) values
    in the radiological view)."""
    slices, rows, columns = left.shape
    header = StackHeader(slices, rows, columns, centre, MODALITIES.get(modality, 1),
                         *mapping, tuple(windows))
    with atomic_output(path) as temporary, temporary.open("wb") as file:
        file.write(header.pack())
        for index in transfer_order(slices, centre):
            file.write(to_codes(left[index], *mapping).tobytes())
            file.write(to_codes(right[index], *mapping).tobytes())


#: The parts a stack is served in: 1 = the header and the pair's own slice, 2 = the rest.
PARTS = (1, 2)


def part_range(header: StackHeader, part: int) -> tuple[int, int]:
    """(start, stop) byte offsets of ``part`` in the stack file: its byte counts depend on
    the stack's size alone, like the file's."""
    split = HEADER.size + 2 * header.rows * header.columns * INT16.bits // 8
    total = HEADER.size + 2 * header.slices * header.rows * header.columns * INT16.bits // 8
    return {1: (0, split), 2: (split, total)}[part]


def read_part(path: Path, part: int) -> bytes:
    """Part 1 or 2 of a stack file (``PARTS``), read without the rest of the file."""
    with Path(path).open("rb") as file:
        start, stop = part_range(StackHeader.unpack(file.read(HEADER.size)), part)
        file.seek(start)
        data = file.read(stop - start)
    if len(data) != stop - start:
        raise ValueError(f"{path}: stack cut off")
    return data


def read_stack(path: Path) -> tuple[StackHeader, np.ndarray]:
    """(header, codes of shape (2, slices, rows, columns)): for tests and tools."""
    data = Path(path).read_bytes()
    header = StackHeader.unpack(data)
    planes = np.frombuffer(data, dtype="<i2", offset=HEADER.size).reshape(
        header.slices, 2, header.rows, header.columns)
    codes = np.empty_like(planes)
    codes[transfer_order(header.slices, header.centre)] = planes
    return header, codes.transpose(1, 0, 2, 3)
