"""medlossy's HTJ2K codestreams are the kind GPU decoders take (issue 23 item 5): every
code-block HT, one HT set, as the main header declares (CAP Ccap15, COD style)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from medlossy.codecs.ht_profile import gpu_profile_problem
from medlossy.compression import Target, compress_volume
from medlossy.store import SliceStore
from medlossy.volume import Volume


@pytest.mark.parametrize("target, tile", [(Target("ratio", 20.0), None),
                                          (Target("lossless"), None),
                                          (Target("ratio", 5.0), 32)])
def test_every_htj2k_chunk_medlossy_writes_is_ht_only_with_one_ht_set(
        ct_b_crop_image, ct_b_crop_array, tmp_path, target, tile) -> None:
    volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    compress_volume(volume, tmp_path / "ct.zarr", target, codec_name="htj2k", workers=1,
                    tile=tile)
    store = SliceStore(tmp_path / "ct.zarr")
    chunks = store.slices * store.grid.per_slice
    assert [gpu_profile_problem(store.codestream(i)) for i in range(chunks)] == [None] * chunks


def _with_ccap15(codestream: bytes, value: int) -> bytes:
    """The codestream with its Ccap15 (the CAP marker's first Ccap) set to ``value``."""
    at = codestream.index(b"\xff\x50") + 2 + 2 + 4  # marker, Lcap, Pcap
    return codestream[:at] + value.to_bytes(2, "big") + codestream[at + 2:]


def test_other_codestreams_are_named_for_what_they_declare() -> None:
    image = np.random.default_rng(0).normal(1000, 50, (64, 64)).astype(np.uint16)
    ht = imagecodecs.htj2k_encode(image, level=0.001)
    assert gpu_profile_problem(ht) is None
    assert "MULTIHT" in gpu_profile_problem(_with_ccap15(ht, 0x2024))
    assert "mixed" in gpu_profile_problem(_with_ccap15(ht, 0xC024))
    part1 = imagecodecs.jpeg2k_encode(image, codecformat="J2K")
    assert "not an HTJ2K codestream" in gpu_profile_problem(part1)
