"""Zarr format 3 codecs for medlossy's chunk codestreams (JPEG 2000, HTJ2K, JPEG XL, JPEG-LS
and the 3D block codecs), so that stock zarr-python 3 reads sharded stores.

Data flow: a store's ``0/zarr.json`` names an array-to-bytes codec ``numcodecs.<id>`` (the
naming zarr-python gives numcodecs codecs in format 3, ``zarr.codecs.numcodecs``) whose
configuration is the numcodecs codec's own (``imagecodecs_jpeg2k``, ``medlossy.block``...)
-> zarr finds the class here through the ``zarr.codecs`` entry points of an installed
medlossy (no import needed) -> the class decodes a chunk with that numcodecs codec and gives
zarr an array of the chunk's shape.

Image codecs are not standard Zarr v3 codecs yet; this module is the adapter a reader needs,
registered the way the zarr community registers extension codecs (entry points in the
``zarr.codecs`` group). It imports only zarr, numcodecs and imagecodecs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from imagecodecs.numcodecs import register_codecs as register_imagecodecs
from numcodecs.abc import Codec as Numcodec
from numcodecs.registry import get_codec as get_numcodec
from zarr.abc.codec import ArrayBytesCodec
from zarr.registry import register_codec

# numcodecs' "medlossy.block" (the block codecs' numcodecs codec) registered on import too,
# where medlossy is on the path without its entry points
from medlossy.codecs import blocks  # noqa: F401

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

#: The prefix zarr-python gives numcodecs codecs in Zarr format 3.
PREFIX = "numcodecs."


@dataclass(frozen=True)
class NumcodecsImageCodec(ArrayBytesCodec):
    """A numcodecs codec that turns a whole chunk (an image or a block) into one codestream,
    as a Zarr format 3 array-to-bytes codec named ``numcodecs.<id>``."""

    codec_id: ClassVar[str]
    configuration: dict[str, Any]
    is_fixed_size = False

    def __init__(self, **configuration: Any) -> None:
        object.__setattr__(self, "configuration", dict(configuration))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(**data.get("configuration", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": PREFIX + self.codec_id, "configuration": dict(self.configuration)}

    def numcodec(self) -> Numcodec:
        return get_numcodec({"id": self.codec_id, **self.configuration})

    def _decode(self, data: bytes, spec: ArraySpec) -> np.ndarray:
        decoded = np.asarray(self.numcodec().decode(data))
        return decoded.astype(spec.dtype.to_native_dtype(), copy=False).reshape(spec.shape)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        decoded = await asyncio.to_thread(self._decode, chunk_bytes.to_bytes(), chunk_spec)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(decoded)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        # Image codecs take the image itself (rows, columns), not a (1, rows, columns) chunk
        image = np.squeeze(chunk_array.as_ndarray_like(), axis=0) \
            if chunk_spec.shape[0] == 1 else chunk_array.as_ndarray_like()
        encoded = await asyncio.to_thread(self.numcodec().encode, image)
        return chunk_spec.prototype.buffer.from_bytes(bytes(encoded))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("the size of a codestream is known once encoded")


def _codec_class(codec_id: str) -> type[NumcodecsImageCodec]:
    name = "".join(part.capitalize() for part in codec_id.replace(".", "_").split("_"))
    return type(name, (NumcodecsImageCodec,), {"codec_id": codec_id,
                                                "__module__": __name__,
                                                "__qualname__": name})


#: The numcodecs ids of medlossy's chunk codecs, each with its Zarr format 3 class.
CODECS: dict[str, type[NumcodecsImageCodec]] = {codec_id: _codec_class(codec_id) for codec_id in (
    "imagecodecs_jpeg2k", "imagecodecs_htj2k", "imagecodecs_jpegxl", "imagecodecs_jpegls",
    "medlossy.block")}
ImagecodecsJpeg2k = CODECS["imagecodecs_jpeg2k"]
ImagecodecsHtj2k = CODECS["imagecodecs_htj2k"]
ImagecodecsJpegxl = CODECS["imagecodecs_jpegxl"]
ImagecodecsJpegls = CODECS["imagecodecs_jpegls"]
MedlossyBlock = CODECS["medlossy.block"]


def array_bytes_codec(numcodec: Numcodec) -> NumcodecsImageCodec:
    """The Zarr format 3 codec of a chunk codec's numcodecs codec."""
    config = dict(numcodec.get_config())
    return CODECS[config.pop("id")](**config)


# numcodecs finds imagecodecs' codecs only once registered; zarr finds the classes here
# through the entry points, or through this registration once the module is imported.
register_imagecodecs(verbose=False)
for _codec in CODECS.values():
    register_codec(PREFIX + _codec.codec_id, _codec)
