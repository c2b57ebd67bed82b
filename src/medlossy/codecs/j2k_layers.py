"""Cut a layered JPEG 2000 codestream after its first quality layers.

JPEG 2000 is embedded: in layer-major (LRCP) order the packets of layers 1..L come first, and
their code-block bytes are exactly what a single-layer encode at layer L's target would store.
No binding medlossy can use does this cut: OpenJPEG's decoders take a layer limit but decode,
they do not rewrite; glymur and imagecodecs write only what they encode; no transcoder exists
for OpenJPEG. So it is written here, on the marker level only (ISO 15444-1 Annex A): the
encoder is asked for PLT segments (packet lengths), so no packet header is ever parsed. The
cut stream is a complete codestream: COD names the layers kept, Psot the new tile-part length,
the PLT segments are dropped (they would describe packets that are no longer there), EOC ends
it. Stock decoders read it as if it had been encoded with those layers only.
"""

from __future__ import annotations

from dataclasses import dataclass

_SOC, _SOT, _SOD, _EOC = b"\xff\x4f", b"\xff\x90", b"\xff\x93", b"\xff\xd9"
_COD, _PLT = b"\xff\x52", b"\xff\x58"
_LRCP = 0


class LayerError(ValueError):
    """The codestream is not one that can be cut at layer boundaries here."""


def _segments(stream: bytes, start: int, stop_marker: bytes) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each marker segment from ``start`` until ``stop_marker``; its offset."""
    segments, position = [], start
    while stream[position : position + 2] != stop_marker:
        if position + 4 > len(stream) or stream[position] != 0xFF:
            raise LayerError(f"no {stop_marker.hex()} marker where expected")
        end = position + 2 + int.from_bytes(stream[position + 2 : position + 4], "big")
        segments.append((position, end))
        position = end
    return segments, position


def _packet_lengths(plt_body: bytes) -> list[int]:
    """Iplt: each length in 7-bit groups, high bit set on all groups but the last."""
    lengths, value = [], 0
    for byte in plt_body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            lengths.append(value)
            value = 0
    return lengths


@dataclass(frozen=True)
class LayeredStream:
    """A single-tile, single-tile-part LRCP codestream with PLT, split at layer ends."""

    main_header: bytes  # SOC .. last main-header segment, COD's layer count still the encoder's
    cod_layers_at: int  # offset of COD's 2-byte layer count in ``main_header``
    tile_header: bytes  # tile-part header segments after SOT, PLT removed
    data: bytes  # the packets of every layer
    layer_ends: tuple[int, ...]  # offset in ``data`` where each layer's packets end

    @property
    def layers(self) -> int:
        return len(self.layer_ends)

    @classmethod
    def parse(cls, stream: bytes) -> LayeredStream:
        if stream[:2] != _SOC:
            raise LayerError("not a JPEG 2000 codestream (no SOC)")
        main, sot = _segments(stream, 2, _SOT)
        cod = [s for s in main if stream[s[0] : s[0] + 2] == _COD]
        if len(cod) != 1:
            raise LayerError("expected one COD segment in the main header")
        cod_start = cod[0][0]
        if stream[cod_start + 5] != _LRCP:
            raise LayerError("progression order is not LRCP")
        layers = int.from_bytes(stream[cod_start + 6 : cod_start + 8], "big")
        tile_part_length = int.from_bytes(stream[sot + 6 : sot + 10], "big")
        if stream[sot + 11] != 1:
            raise LayerError("expected a single tile-part")
        tile_segments, sod = _segments(stream, sot + 12, _SOD)
        lengths: list[int] = []
        kept = bytearray()
        for start, end in tile_segments:
            if stream[start : start + 2] == _PLT:
                lengths += _packet_lengths(stream[start + 5 : end])
            else:
                kept += stream[start:end]
        data = stream[sod + 2 : sot + tile_part_length]
        if not lengths or sum(lengths) != len(data) or len(lengths) % layers:
            raise LayerError(f"PLT packet lengths ({len(lengths)} packets, {sum(lengths)} "
                             f"bytes) do not match {layers} layers of {len(data)} bytes")
        per_layer = len(lengths) // layers
        ends, total = [], 0
        for layer in range(layers):
            total += sum(lengths[layer * per_layer : (layer + 1) * per_layer])
            ends.append(total)
        return cls(stream[:sot], cod_start + 6, bytes(kept), data, tuple(ends))

    def size(self, layers: int) -> int:
        """Bytes of the codestream cut after ``layers`` layers (what ``cut`` returns)."""
        return len(self.main_header) + 12 + len(self.tile_header) + 2 + \
            self.layer_ends[layers - 1] + 2

    def cut(self, layers: int) -> bytes:
        """The complete codestream of the first ``layers`` quality layers."""
        if not 1 <= layers <= self.layers:
            raise LayerError(f"cannot keep {layers} of {self.layers} layers")
        main = bytearray(self.main_header)
        main[self.cod_layers_at : self.cod_layers_at + 2] = layers.to_bytes(2, "big")
        data = self.data[: self.layer_ends[layers - 1]]
        psot = 12 + len(self.tile_header) + 2 + len(data)
        sot = _SOT + (10).to_bytes(2, "big") + b"\x00\x00" + psot.to_bytes(4, "big") + b"\x00\x01"
        return bytes(main) + sot + self.tile_header + _SOD + data + _EOC
