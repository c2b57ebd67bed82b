"""Published clinical guidance on irreversible (lossy) compression, shown beside a safe ratio.

The ratios below are what two national guidelines accept for diagnostic reading of JPEG 2000
compressed images by radiologists. They are context for a study's result, never a verdict on
it: they were set by readers looking at 2D images, not by segmentation networks, and each
guideline counts the ratio its own way (against the image as stored for reading).

Sources:
    CAR: Canadian Association of Radiologists, standards for irreversible compression in
        digital diagnostic imaging (2008), from the Pan-Canadian evaluation: Koff D, Bak P,
        Brownrigg P et al., J Digit Imaging 2009;22(6):569-578.
    DRG: German Roentgen Society (Deutsche Roentgengesellschaft) consensus conference 2008:
        Loose R, Braunschweig R, Kotter E et al., Rofo 2009;181(1):32-37.
"""

from __future__ import annotations

from medlossy.experiments.statistics import SafeRatio

#: Body regions a study config may state per dataset (``body_region`` in ``[[datasets]]``).
BODY_REGIONS = ("abdomen", "chest", "musculoskeletal", "head")
GUIDELINES = {
    "CAR": "Canadian Association of Radiologists 2008 (Koff et al., J Digit Imaging 2009)",
    "DRG": "German Roentgen Society consensus 2008 (Loose et al., Rofo 2009)",
}
#: (modality, body region) -> the largest JPEG 2000 ratio each guideline accepts.
_ACCEPTED: dict[tuple[str, str], dict[str, float]] = {
    ("CT", "abdomen"): {"CAR": 15, "DRG": 8},
    ("CT", "chest"): {"CAR": 15, "DRG": 8},
    ("CT", "musculoskeletal"): {"CAR": 15, "DRG": 8},
    ("CT", "head"): {"CAR": 12, "DRG": 5},
    **{("MR", region): {"CAR": 24, "DRG": 7} for region in BODY_REGIONS},
}


def accepted_ratios(modality: str, region: str) -> dict[str, float]:
    """The ratio each guideline accepts for ``modality`` ("CT", "MR") and ``region``;
    empty where neither covers the pair."""
    if region not in BODY_REGIONS:
        raise ValueError(f"body_region must be one of {', '.join(BODY_REGIONS)}, got "
                         f"{region!r}")
    return dict(_ACCEPTED.get((modality.upper(), region), {}))


def compared(safe_ratio: float | None, accepted: float) -> str:
    """How a study's safe ratio stands against one guideline's accepted ratio, in words."""
    if safe_ratio is None or safe_ratio <= 1:
        return "no compressed ratio shown safe here"
    if safe_ratio > accepted:
        return f"beyond it (x{safe_ratio:g} > {accepted:g}:1)"
    if safe_ratio == accepted:
        return "equal"
    return f"within it (x{safe_ratio:g} < {accepted:g}:1)"


#: What the report says above the guidance table.
GUIDANCE_TEXT = (
    "Published ratios accepted for irreversible JPEG 2000 compression in diagnostic reading, "
    f"for each dataset's modality and stated body region: {GUIDELINES['CAR']} and "
    f"{GUIDELINES['DRG']}. Context, not a verdict: those ratios come from radiologists reading "
    "2D images for diagnosis, this study's safe ratio from segmentation networks, and each "
    "guideline counts its ratio in its own way (against the image as stored for reading). "
    "A safe ratio beyond them says the networks tolerate more than readers are allowed to, "
    "not that archives may go further.")


def _safe_words(safe: SafeRatio | None) -> str:
    """The study's safe ratio as its statistics section says it."""
    if safe is None or safe.ratio is None:
        return "none named (too few test cases)"
    if safe.ratio > 1:
        return f"x{safe.ratio:g}"
    if safe.next_verdict == "inferior":
        return f"none safe (x{safe.next_ratio:g} inferior)"
    return "inconclusive (none shown safe)"


def guidance_rows(datasets: list[tuple[str, str, str | None, SafeRatio | None, bool]],
                  ) -> list[dict]:
    """One table row per ``(dataset, modality, body_region, safe ratio, trained)``."""
    rows = []
    for name, modality, region, safe, trained in datasets:
        row: dict = {"dataset": name, "modality": modality,
                     "body_region": region or "not stated (body_region in [[datasets]])",
                     "safe_ratio": _safe_words(safe) if trained
                     else "not trained (quality only)"}
        accepted = accepted_ratios(modality, region) if region else {}
        for key in GUIDELINES:
            ratio = accepted.get(key)
            row[f"{key} 2008"] = f"{ratio:g}:1" if ratio else ""
            row[f"vs {key}"] = (compared(safe.ratio if safe else None, ratio)
                                if ratio and trained else "")
        rows.append(row)
    return rows
