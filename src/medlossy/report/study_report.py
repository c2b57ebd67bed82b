"""report.md and a self-contained report.html (figures embedded) for a study run."""

from __future__ import annotations

import base64
import html
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.report.lossless import lossless_ratios, stored_column
from medlossy.tables import markdown_table


@dataclass
class Section:
    title: str
    text: str
    table: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)


def quality_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and ratio: achieved ratio, PSNR mean/min, footprint (the study's Fig. 1)."""
    summary = table.groupby(["dataset", "ratio_target"]).agg(
        images=("case", "size"),
        ratio_achieved=("ratio_achieved", "mean"),
        all_reached=("target_reached", "all"),
        psnr_mean_db=("psnr_db", "mean"),
        psnr_min_db=("psnr_db", "min"),
        stored_mb=("stored_bytes", lambda b: b.sum() / 1e6),
    ).reset_index()
    summary.insert(2, "stored", "lossy")
    for dataset, rows in table.groupby("dataset"):
        mine = summary["dataset"] == dataset
        summary.loc[mine, "stored"] = stored_column(summary.loc[mine, "ratio_target"],
                                                    lossless_ratios(rows)).to_numpy()
    return summary.round({"ratio_achieved": 3, "psnr_mean_db": 2, "psnr_min_db": 2,
                          "stored_mb": 3})


def _machine() -> str:
    return f"{platform.node()} ({platform.machine()}, {platform.system()}, Python " \
           f"{platform.python_version()})"


def write_report(out: Path, title: str, preamble: str, sections: list[Section]) -> list[Path]:
    """Write out/report.md and out/report.html; figures are referenced (md) or embedded."""
    header = f"# {title}\n\n{preamble}\n\nmedlossy {__version__} on {_machine()}.\n"
    markdown = [header]
    body = [f"<h1>{html.escape(title)}</h1><p>{html.escape(preamble)}</p>"
            f"<p>medlossy {__version__} on {html.escape(_machine())}.</p>"]
    for section in sections:
        markdown.append(f"\n## {section.title}\n\n{section.text}\n")
        body.append(f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        for figure in section.figures:
            if figure.suffix == ".png":
                markdown.append(f"\n![{section.title}]({figure.relative_to(out)})\n")
                encoded = base64.b64encode(figure.read_bytes()).decode()
                body.append(f'<img alt="{html.escape(section.title)}" '
                            f'src="data:image/png;base64,{encoded}">')
        if section.table is not None:
            markdown.append("\n" + markdown_table(section.table) + "\n")
            body.append(section.table.to_html(index=False, na_rep="", float_format="%g"))
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
    paths = []
    for name, content in (("report.md", "".join(markdown)), ("report.html", page)):
        with atomic_output(out / name) as temporary:
            temporary.write_text(content)
        paths.append(out / name)
    return paths
