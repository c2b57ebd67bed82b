"""Markdown tables for reports: pandas' to_markdown needs the tabulate package; this is the
few lines medlossy needs (infinite PSNR shown as "inf", floats in %g)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "inf" if np.isinf(value) else f"{value:g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)
