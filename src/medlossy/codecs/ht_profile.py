"""Whether an HTJ2K codestream is one GPU decoders take: HT code-blocks only, one HT set each.

nvImageCodec (nvjpeg2k) decodes HTJ2K on the GPU only when every code-block is HT with a
single HT set and no refinement passes. The main header declares the first two: JPEG 2000
Part 15's CAP marker (Ccap15: HTONLY, SINGLEHT) and the COD marker's code-block style (HT).
Refinement passes live in the packets; OpenJPH, medlossy's HTJ2K encoder, writes cleanup
passes only. The markers are read with glymur's codestream parser.
"""

from __future__ import annotations

import io

#: Pcap's bit for Part 15 capabilities (bit 32 - 15, counted from the most significant).
PART15 = 1 << 17
#: Ccap15's top two bits: 00 HTONLY, 10 HTDECLARED, 11 MIXED; the next bit: MULTIHT.
_BLOCKS, _MULTIHT = 0xC000, 0x2000
#: COD code-block style: HT code-blocks; with the next bit, HT and Part 1 mixed.
_HT_STYLE, _MIXED_STYLE = 0x40, 0x80


def gpu_profile_problem(codestream: bytes) -> str | None:
    """None where ``codestream``'s header declares HT code-blocks only, one HT set each (what
    GPU HTJ2K decoders need); else what it declares instead."""
    from glymur.codestream import Codestream

    header = Codestream(io.BytesIO(codestream), len(codestream), header_only=True)
    segments = {segment.marker_id: segment for segment in header.segment}
    cap, cod = segments.get("CAP"), segments.get("COD")
    if cap is None or not cap.pcap & PART15:
        return "no Part 15 capabilities (CAP): not an HTJ2K codestream"
    ccap15 = cap.ccap[bin(cap.pcap >> 18).count("1")]  # one Ccap per Part flagged before 15
    if ccap15 & _BLOCKS:
        return "code-blocks declared HT and Part 1 mixed, not HT only"
    if ccap15 & _MULTIHT:
        return "several HT sets per code-block allowed (MULTIHT)"
    if cod is None or not cod.cstyle & _HT_STYLE or cod.cstyle & _MIXED_STYLE:
        return "the COD marker's code-block style is not HT only"
    return None
