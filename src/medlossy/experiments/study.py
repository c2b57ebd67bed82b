"""Run the study's experiments on datasets and write one report.

Order: compress every dataset at every ratio any experiment needs (quality is the sweep's
manifest), then train / predict / evaluate the segmentation units, then statistics, figures,
the tidy results table and the report. Every step is cached, so a rerun after a kill resumes.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.datasets.preparation import crop_dataset
from medlossy.experiments import segmentation as seg
from medlossy.experiments.budget import TOLERANCE, BudgetArms, plan_budget
from medlossy.experiments.config import StudyConfig, training_experiments
from medlossy.experiments.guidelines import GUIDANCE_TEXT, guidance_rows
from medlossy.experiments.quality import run_quality
from medlossy.experiments.scaleout import dask_cluster, local_gpus
from medlossy.experiments.statistics import (
    SKEW_WARNING,
    SafeRatio,
    compare_budget_arms,
    compare_mixed,
    mean_intervals,
    non_inferiority,
    safe_ratios,
    tail_cases_needed,
)
from medlossy.report import pictures
from medlossy.report import segmentation_figures as figures
from medlossy.report.lossless import lossless_ratios, ratio_label, stored_column
from medlossy.report.quality_figure import plot_quality
from medlossy.report.study_report import Section, quality_summary, write_report

#: Below a tenth of this, a demo-sized run cannot support conclusions; the report says so.
PAPER_ITERATIONS = 300 * 250


def _code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=True).stdout
        return f"{__version__}+{commit.strip()}"
    except (OSError, subprocess.CalledProcessError):
        return __version__


def _write_table(table: pd.DataFrame, stem: Path) -> list[Path]:
    paths = []
    for suffix, write in ((".csv", lambda t, p: t.to_csv(p, index=False)),
                          (".parquet", lambda t, p: t.to_parquet(p, index=False))):
        with atomic_output(stem.with_suffix(suffix)) as temporary:
            write(table, temporary)
        paths.append(stem.with_suffix(suffix))
    return paths


def sweep_ratios(config: StudyConfig, *, nominal_budget: bool = False) -> list[float]:
    """Ratios to compress a training dataset at before training; the budget's compressed
    ratios are searched for afterwards (``budget``), or estimated as 1 / fraction
    (``nominal_budget``, for the dry run)."""
    ratios = set(config.ratios)
    if training_experiments(config):
        ratios |= set(config.train_ratios)
    if "budget" in config.experiments and nominal_budget:
        ratios |= set(config.budget_ratios)
    return sorted(ratios)


def _measure_budgets(config: StudyConfig, dataset: RawDataset, folder: Path,
                     ratios: list[float], manifest: pd.DataFrame,
                     compress: Callable[[list[float]], pd.DataFrame],
                     name: str) -> list[BudgetArms]:
    """Equal-byte arms of every fold and fraction; ``compress(ratios)`` sweeps (cached) and
    records the ratios in the sweep's sweep.json, so every ratio asked for is swept here
    (also when an earlier run left its stores)."""
    state = {"manifest": manifest, "ratios": set(ratios)}

    def measure(ratio: float) -> pd.DataFrame:
        if ratio not in state["ratios"]:
            state["ratios"].add(ratio)
            state["manifest"] = compress(sorted(state["ratios"]))
        return state["manifest"]

    reference = open_raw_dataset(seg.sweep_folders(name, folder)[1])
    labelled = [case.name for case in reference.cases() if case.label is not None]
    return [plan_budget(name, labelled, config.folds, fold, fraction,
                        state["manifest"], measure)
            for fold in config.train_folds for fraction in config.budget_fractions]


def _budget_verdict(comparison: pd.DataFrame) -> str:
    lines = [f"{row.dataset}, {row.budget_fraction:.0%} budget: {row.verdict} (compressed - "
             f"few-shot {row.mean_difference:+.3f} Dice, 95% CI [{row.ci_low:.3f}, "
             f"{row.ci_high:.3f}], {row.cases} cases)"
             for row in comparison.itertuples() if row.budget_fraction < 1]
    return "; ".join(lines) + "." if lines else ""


def _out_of_reach_notes(folder: Path) -> list[str]:
    """Why a sweep left ratios out (sweep.json), one phrase per ratio."""
    reasons = json.loads((folder / "sweep.json").read_text()).get("out_of_reach", {})
    return [f"{tag.replace('r', 'x', 1)} on {folder.name} ({Path(why.split(': ', 1)[0]).name}: "
            f"{_reason(why)})" for tag, why in reasons.items()]


def _reason(why: str) -> str:
    """WHY of "IMAGE: ratio xR is out of the reach of codec 'C': WHY" (or of "... codec
    'C''s reach: WHY", as sweeps of earlier versions wrote it)."""
    return re.split(r"reach: |': ", why, maxsplit=1)[-1]


def _lossless_note(notes: dict[float, str]) -> str:
    if not notes:
        return ""
    listed = ", ".join(f"x{r:g} ({n})" for r, n in sorted(notes.items()))
    return (f" Stored losslessly because lossless coding already beats the ratio: {listed}; "
            "their rows and ticks say so: no compression loss there, not a lossy ratio shown "
            "safe.")


def _label_ratio_columns(table: pd.DataFrame, notes: dict[float, str]) -> pd.DataFrame:
    """Table 1's ratio columns ("x2") with their lossless notes."""
    return table.rename(columns={f"x{r:g}": ratio_label(r, notes) for r in notes})


def _skew_note(tests: pd.DataFrame) -> str:
    """Tests whose per-case differences are so left-skewed that a few cases fail badly."""
    skewed = tests[tests["skewness"] < SKEW_WARNING]
    if skewed.empty:
        return ""
    listed = ", ".join(f"{d} {c} x{r:g}" for d, c, r in zip(
        skewed["dataset"], skewed["class"], skewed["ratio"], strict=True))
    return (f"Per-case differences strongly left-skewed (skewness < {SKEW_WARNING:g}: a few "
            f"cases fail badly) for {listed}; the mean's interval alone errs above nominal "
            "there, the tail criterion ('tail_share', 'tail_upper') is what guards them. ")


def _model_note(config: StudyConfig, tests: pd.DataFrame) -> str:
    """How the interval took training noise in (estimated, or assumed and why)."""
    routes = set(tests["model_noise"].dropna()) - {""}
    spread = tests.loc[tests["class"] == "mean", "model_sd"]
    shown = (f"Model sd of the mean difference ('model_sd'): {spread.min():.4f} to "
             f"{spread.max():.4f} Dice, beside the margin {config.margin:g}. "
             if spread.notna().any() else "")
    notes = []
    if "assumed" in routes:
        notes.append(
            "One model per ratio (one fold, one seed): training noise, which shifts every "
            "case a model predicts and can be as large as the margin, is not estimable from "
            "this design, so the interval adds an assumed model-to-model sd of "
            f"{config.assumed_model_sd:g} Dice (assumed_model_sd): wider, never narrower, "
            "than a case-only interval; train_folds = [0, 1, 2] or seeds = [0, 1, 2] "
            "measure it instead.")
    if "folds" in routes:
        notes.append(
            f"One seed x folds {list(config.train_folds)}: each fold's model pair is an "
            "independent replicate, so the interval is a t over the fold-level mean "
            f"differences ({len(config.train_folds) - 1} degree"
            f"{'s' if len(config.train_folds) > 2 else ''} of freedom), which carries "
            f"training noise. {shown}")
    if "seeds" in routes:
        notes.append(
            f"{len(config.training_seeds)} seeds x folds {list(config.train_folds)}: each "
            "case's difference is averaged over the seeds and the interval adds the "
            "between-seed variance of the per-model mean difference (training noise). "
            f"{shown}")
    return " ".join(notes)


def _verdict_rule(config: StudyConfig) -> str:
    needed = tail_cases_needed(config.tail_limit)
    return (f"Verdicts: non-inferior when the interval's lower bound is above "
            f"-{config.margin:g} and, with 97.5% confidence (exact Clopper-Pearson bound "
            f"'tail_upper'), fewer than {config.tail_limit:.0%} of the cases lose more than "
            f"{config.tail_drop:g} Dice (a test needs at least {needed} cases, none of them "
            "failing, to pass that); inferior when the whole interval is below the margin; "
            "otherwise inconclusive: not shown safe, not shown unsafe (the tail bound "
            "counts cases as independent, which a model's shift on all its cases is not, so "
            "it only withholds 'non-inferior'). 'detectable_margin' is the smallest margin "
            "the study would "
            "show with 80% power were the ratio harmless. A class empty in a case's "
            "reference but predicted by one of the two models counts as a failure of that "
            "case (Dice 0 against 1; 'empty_reference' counts them); 'cases' is what each "
            "test used. ")


def _why_inconclusive(config: StudyConfig, row: pd.Series) -> str:
    needed = tail_cases_needed(config.tail_limit)
    if not row["cases"] >= 2:
        return f"{row['cases']} case"
    if row["tail_upper"] >= config.tail_limit:
        if row["cases"] < needed:
            return (f"{row['cases']} cases cannot bound the failing share below "
                    f"{config.tail_limit:.0%}; at least {needed} are needed")
        return (f"{row['tail_share']:.0%} of cases lose more than {config.tail_drop:g} Dice, "
                f"bound {row['tail_upper']:.0%} against the limit {config.tail_limit:.0%}")
    if row["detectable_margin"] > config.margin:
        return (f"detectable margin {row['detectable_margin']:.3f} > margin "
                f"{config.margin:g}: too few cases or models")
    return f"interval [{row['ci_low']:.3f}, {row['ci_high']:.3f}] holds -{config.margin:g}"


def _stop_phrase(config: StudyConfig, tests: pd.DataFrame, dataset: str,
                 safe: SafeRatio) -> str:
    """'x20 inconclusive for class spleen (why)' for the ratio that stops the sequence."""
    row = tests[(tests["dataset"] == dataset) & (tests["class"] == safe.limited_by)
                & (tests["ratio"] == safe.next_ratio)].iloc[0]
    who = "the per-case mean" if safe.limited_by == "mean" else f"class {safe.limited_by}"
    phrase = f"x{safe.next_ratio:g} {safe.next_verdict} for {who}"
    if safe.next_verdict == "inconclusive":
        phrase += f" ({_why_inconclusive(config, row)})"
    return phrase


def _safe_verdict(config: StudyConfig, tests: pd.DataFrame) -> str:
    over_classes = config.safe_ratio_over == "classes"
    lines = []
    for dataset, safe in safe_ratios(tests, config.min_test_cases,
                                     over_classes=over_classes).items():
        if safe.ratio is None:
            fewest = int(tests.loc[(tests["dataset"] == dataset)
                                   & (tests["class"] == "mean"), "cases"].min())
            line = (f"{dataset}: no safe ratio named: a test used {fewest} cases, fewer "
                    f"than min_test_cases = {config.min_test_cases}")
        elif safe.next_ratio is None:
            line = (f"{dataset}: safe up to x{safe.ratio:g} (shown non-inferior for "
                    + ("every class " if over_classes else "the per-case mean ")
                    + "at every ratio tested)")
        elif safe.ratio > 1:
            line = (f"{dataset}: safe up to x{safe.ratio:g} (shown non-inferior); "
                    + _stop_phrase(config, tests, dataset, safe))
        elif safe.next_verdict == "inferior":
            line = (f"{dataset}: no compressed ratio safe: "
                    + _stop_phrase(config, tests, dataset, safe))
        else:
            line = (f"{dataset}: inconclusive, no compressed ratio shown non-inferior (nor "
                    "unsafe): " + _stop_phrase(config, tests, dataset, safe))
        if safe.ratio is not None and safe.too_few_cases:
            line += (f"; not tested for {', '.join(safe.too_few_cases)}: fewer than "
                     f"{config.min_test_cases} cases contain them (they stop it only where "
                     "inferior)")
        lines.append(line)
    rule = ("the smallest over the classes and the per-case mean" if over_classes
            else "from the per-case mean alone")
    return (f"Safe ratio ({rule}; the largest ratio that it and every smaller ratio are "
            "shown non-inferior): " + "; ".join(lines) + ".") if lines else ""


def _guidance_section(config: StudyConfig, results: pd.DataFrame,
                      described: list[tuple[str, str, str | None, bool]]) -> Section:
    """Published clinical guidance beside each dataset's safe ratio (context only)."""
    safe: dict[str, SafeRatio] = {}
    if "train" in config.experiments and not results.empty:
        tests = non_inferiority(results, config.margin, tail_drop=config.tail_drop,
                                tail_limit=config.tail_limit,
                                assumed_model_sd=config.assumed_model_sd)
        safe = safe_ratios(tests, config.min_test_cases,
                           over_classes=config.safe_ratio_over == "classes")
    rows = guidance_rows([(name, modality, region, safe.get(name), trained and name in safe)
                          for name, modality, region, trained in described])
    return Section("Clinical guidance (context, not a verdict)", GUIDANCE_TEXT,
                   pd.DataFrame(rows))


def _with_intervals(table: pd.DataFrame, results: pd.DataFrame, experiment: str,
                    column: str, assumed_model_sd: float) -> pd.DataFrame:
    """``seg.mean_by``'s table with the 95% interval of each mean."""
    if table.empty:
        return table
    intervals = mean_intervals(results, experiment, [column],
                               assumed_model_sd=assumed_model_sd)
    keys = ["dataset", "experiment", column]
    return table.merge(intervals[[*keys, "ci_low", "ci_high"]].round(4), on=keys,
                       how="left")


def _cross_table(results: pd.DataFrame, dataset: str, config: StudyConfig,
                 notes: dict[float, str]) -> pd.DataFrame:
    """The cross-ratio matrix as "mean [low, high]" cells, the mixed-ratio model last."""
    def cells(experiment: str, by: list[str]) -> pd.DataFrame:
        table = mean_intervals(results, experiment, by,
                               assumed_model_sd=config.assumed_model_sd)
        table = table[table["dataset"] == dataset]
        if table.empty:
            return table.assign(cell=pd.Series(dtype=str))
        return table.assign(cell=[f"{m:.4f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(
            table["mean_dice"], table["ci_low"], table["ci_high"], strict=True)])

    matrix = cells("cross", ["ratio_train", "ratio_test"]).pivot(
        index="ratio_train", columns="ratio_test", values="cell")
    mixed = cells("mixed", ["ratio_test"]).set_index("ratio_test")["cell"]
    if len(matrix) and len(mixed):
        matrix = pd.concat([matrix, mixed.reindex(matrix.columns).to_frame(seg.MIXED_ROW).T])
    matrix = matrix.rename(index=lambda r: _train_label(r, notes),
                           columns=lambda r: f"test {ratio_label(r, notes)}")
    return matrix.reset_index(names="model").rename_axis(columns=None)


def _train_label(ratio: float | str, notes: dict[float, str]) -> str:
    """A cross-ratio matrix row's name: "train x20", or "train mixed"."""
    return f"train {ratio if ratio == seg.MIXED_ROW else ratio_label(ratio, notes)}"


def unit_runner(gpus: Sequence[str] | None, scheduler: str | None) -> seg.Runner:
    """Where training and prediction units run: Dask, local GPUs, or here one by one."""
    if scheduler is not None:
        return dask_cluster(scheduler)
    if gpus:
        return local_gpus(gpus)
    return seg.serial


def run_study(config: StudyConfig, out: Path, *, workers: int | None = None,
              scheduler: str | None = None, gpus: Sequence[str] | None = None,
              show_progress: bool = False, notes: str = "") -> list[Path]:
    """Run every experiment of ``config`` into ``out``; returns the report files.

    ``scheduler`` (a Dask address) runs the compression units and the training and
    prediction units (one GPU each) on a cluster; ``gpus`` runs the training and prediction
    units one per local GPU.
    """
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    quality_tables, sweeps, budgets, training_quality = [], [], [], []
    described: list[tuple[str, str, str | None, bool]] = []  # name, modality, region, trained
    synthetic: set[str] = set()
    unreached: list[str] = []
    every_sweep: list[tuple[str, Path, str | None]] = []  # name, folder, body region
    for index, entry in enumerate(config.datasets):
        dataset = open_raw_dataset(entry.path)
        if entry.crop_to_label:
            dataset = crop_dataset(dataset, entry.crop_to_label, entry.crop_margin_mm,
                                   out / "prepared")
        ratios = sweep_ratios(config) if entry.train else sorted(config.ratios)
        for position, codec in enumerate(config.codecs):
            name = config.sweep_name(dataset.name, codec)
            described.append((name, dataset.channel_modality(0), entry.body_region,
                              entry.train))
            if entry.synthetic:
                synthetic.add(name)
            folder = out / "sweeps" / name
            base_id = config.base_id + 10 * (index * len(config.codecs) + position)
            compress = partial(run_quality, dataset, folder, base_id=base_id, workers=workers,
                               scheduler=scheduler, show_progress=show_progress,
                               codec=None if codec == "jpeg2k" else codec, name=name,
                               tile=config.tile,
                               origin=entry.path if entry.crop_to_label else None)
            table = compress(ratios)
            every_sweep.append((name, folder, entry.body_region))
            unreached += _out_of_reach_notes(folder)
            quality_tables.append(table[table["ratio_target"].isin(config.ratios)])
            if entry.train and "budget" in config.experiments:
                budgets += _measure_budgets(config, dataset, folder, ratios, table, compress,
                                            name)
            if entry.train:
                sweeps.append(seg.sweep_folders(name, folder))
                training_quality.append(table)
    quality = pd.concat(quality_tables, ignore_index=True)
    timings["compress (quality)"] = time.perf_counter() - started

    segmentation_wanted = training_experiments(config)
    results, plan = pd.DataFrame(columns=seg.RESULT_COLUMNS), seg.SegmentationPlan()
    footprints = pd.DataFrame([row for arms in budgets for row in arms.rows()])
    if segmentation_wanted and sweeps:
        step = time.perf_counter()
        plan = seg.plan_segmentation(config, sweeps, out, budgets)
        results = seg.run_plan(plan, runner=unit_runner(gpus, scheduler),
                               show_progress=show_progress)
        if "pretrained" in config.experiments and "checkpoint" in config.pretrained:
            from medlossy.pretrained.evaluate import evaluate_pretrained

            for sweep in sweeps:
                table = evaluate_pretrained(config.pretrained["checkpoint"],
                                            out / "sweeps" / sweep.name,
                                            label_map=config.pretrained.get("label_map"))
                table.insert(0, "experiment", "pretrained")
                table.insert(1, "dataset", sweep.name)
                table["train_seed"] = float("nan")  # not trained by this study
                table["train_fraction"] = 1.0
                results = pd.concat([results, table[list(seg.RESULT_COLUMNS)]],
                                    ignore_index=True)
        timings["train, predict, evaluate"] = time.perf_counter() - step
    agreement = None
    if "pretrained" in config.experiments and "model" in config.pretrained:
        from medlossy.experiments.pretrained import run_agreement

        step = time.perf_counter()
        agreement = run_agreement(config, every_sweep, out, show_progress=show_progress)
        timings["pretrained model"] = time.perf_counter() - step

    machine = f"{platform.node()} {platform.machine()} Python {platform.python_version()}"
    provenance = {"config_hash": config.digest(), "code_version": _code_version(),
                  "seed": config.seed, "machine": machine}
    tidy = pd.concat([
        quality.melt(id_vars=["dataset", "case", "channel", "ratio_target"],
                     value_vars=["psnr_db", "ratio_achieved", "stored_bytes", "mse",
                                 "max_abs_error"], var_name="metric")
        .rename(columns={"ratio_target": "ratio_test"}).assign(experiment="quality"),
        results.drop(columns=[c for c in ("budget_fraction",) if c in results]),
    ], ignore_index=True).assign(**provenance)
    tidy["value"] = pd.to_numeric(tidy["value"], errors="coerce")
    for column in ("case", "class", "fold"):
        if column in tidy:
            tidy[column] = tidy[column].astype(str)
    _write_table(tidy, out / "results")

    sections = [_quality_section(quality, out, synthetic)]
    if len(config.codecs) > 1:
        sections.append(_codec_section(quality, results))
    notes = lossless_ratios(pd.concat(training_quality)) if training_quality else {}
    sections += _segmentation_sections(config, results, footprints, out, notes)
    if agreement is not None:
        from medlossy.experiments.pretrained import agreement_section

        sections.append(agreement_section(agreement, out))
    sections.append(_guidance_section(config, results, described))
    sections += _reader_section(config)
    sections += _picture_sections(config, out, plan)
    timings["total"] = time.perf_counter() - started
    sections.append(Section(
        "Run", "Wall time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                  timings.items())
        + f". Config hash {provenance['config_hash']}, medlossy {provenance['code_version']}, "
          f"seed {config.seed}. Every measurement: results.csv / results.parquet."))
    names = [e.path.name + (" (SYNTHETIC)" if e.synthetic else "") for e in config.datasets]
    preamble = (f"Datasets: {', '.join(names)}. Compression ratios: "
                f"{', '.join(ratio_label(r, notes) for r in config.ratios)}.")
    if unreached:
        preamble += (" Not swept, out of the codec's reach (every stored byte counted): "
                     + "; ".join(unreached) + ".")
    return write_report(out, "medlossy study report", preamble, sections)


def codec_comparison(quality: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per codec and ratio: mean PSNR of every image and, where models were trained, the mean
    Dice (over test cases) of the model trained and tested at that ratio."""
    lossy = quality[np.isfinite(quality["psnr_db"])]
    table = lossy.groupby(["study_codec", "ratio_target"]).agg(
        images=("case", "size"), ratio_achieved=("ratio_achieved", "mean"),
        psnr_mean_db=("psnr_db", "mean"), psnr_min_db=("psnr_db", "min")).reset_index()
    dice = results[(results["experiment"] == "train") & (results["metric"] == "dice")
                   & (results["class"] == "mean")] if not results.empty else results
    if not dice.empty:
        codec_of = quality.drop_duplicates("dataset").set_index("dataset")["study_codec"]
        dice = dice.assign(study_codec=dice["dataset"].map(codec_of),
                           value=pd.to_numeric(dice["value"], errors="coerce"))
        mean = dice.groupby(["study_codec", "ratio_train"])["value"].mean().rename(
            "dice_mean_over_cases")
        table = table.merge(mean, how="left", left_on=["study_codec", "ratio_target"],
                            right_index=True)
    return table.rename(columns={"study_codec": "codec"}).round(
        {"ratio_achieved": 3, "psnr_mean_db": 2, "psnr_min_db": 2,
         "dice_mean_over_cases": 4})


def _codec_section(quality: pd.DataFrame, results: pd.DataFrame) -> Section:
    return Section(
        "Codecs at equal ratio", "Every codec of the config compressed the same images to "
        "the same ratios (each a sweep of its own; ratio 1 is the same lossless reference for "
        "all). Mean PSNR over images and, where trained, mean Dice over test cases of the "
        "model trained and tested at that ratio, per codec. Lossless rows are left out.",
        codec_comparison(quality, results))


def synthetic_against_real(quality: pd.DataFrame, synthetic: set[str]) -> str:
    """How far the SYNTHETIC CT datasets' mean PSNR per lossy ratio lies from the real CT
    datasets' (both in this run), and why where it is more than 2 dB."""
    ct = quality[(quality["modality"] == "CT") & np.isfinite(quality["psnr_db"])]
    fake = ct[ct["dataset"].isin(synthetic)].groupby("ratio_target")["psnr_db"].mean()
    real = ct[~ct["dataset"].isin(synthetic)].groupby("ratio_target")["psnr_db"].mean()
    gaps = (fake - real).dropna()
    if gaps.empty:
        return ""
    listed = ", ".join(f"x{r:g} {gap:+.1f} dB" for r, gap in gaps.items())
    text = f" SYNTHETIC minus real CT, mean PSNR per ratio: {listed}."
    above, below = gaps[gaps > 2].index, gaps[gaps < -2].index
    if len(above):
        text += (f" At {', '.join(f'x{r:g}' for r in above)} the phantom keeps more than 2 dB "
                 "more than real CT: its texture is drawn smooth (over 6 mm) beside calibrated "
                 "noise and lacks real CT's fine detail, so its Dice there may understate "
                 "what compression does to real CT.")
    if len(below):
        text += (f" At {', '.join(f'x{r:g}' for r in below)} it loses more than 2 dB more "
                 "than real CT: small slices pay a larger share of each ratio's bytes to the "
                 "fixed header of every slice's codestream, so its Dice there may overstate "
                 "what compression does to real CT.")
    return text


def _quality_section(quality: pd.DataFrame, out: Path, synthetic: set[str]) -> Section:
    figures_written = plot_quality(quality, out / "quality")
    return Section(
        "1. Image quality", "PSNR (r = 4096 for CT; max - min over the dataset for MR) of "
        "every image at every ratio; ratio 1 is lossless. Achieved ratios count every byte of "
        "each store. Images stored losslessly (x1, and x2 where lossless already fits the "
        "budget) have infinite PSNR and are not plotted." + synthetic_against_real(
            quality, synthetic),
        quality_summary(quality), figures_written)


def _mixed_ratios_note(config: StudyConfig, swept: set[float]) -> str:
    """The mixed model's ratios, with their weights where they are not equal."""
    weights = config.mixed_weights or (1,) * len(config.mixed_model_ratios)
    chosen = [(r, w) for r, w in zip(config.mixed_model_ratios, weights, strict=True)
              if r in swept]
    if not config.mixed_weights:
        return ", ".join(f"x{r:g}" for r, _ in chosen) + ": the ratios swept, equally often"
    return (", ".join(f"x{r:g} weight {w:g}" for r, w in chosen)
            + ": the ratios swept, each drawn as often as its weight says")


def _mixed_start_note(config: StudyConfig) -> str:
    epochs = config.mixed_epochs or int(config.training.get("epochs", 300))
    if config.mixed_start == "x1":
        return (f"continuing the x1 model for {epochs} more epochs from its last learning "
                "rate")
    return f"a fresh network trained for {epochs} epochs"


def _mixed_section(config: StudyConfig, results: pd.DataFrame, out: Path,
                   notes: dict[float, str]) -> list[Section]:
    """Section 3b: the mixed-ratio model against the x1 model and each ratio's model."""
    comparison = compare_mixed(results, assumed_model_sd=config.assumed_model_sd)
    if comparison.empty:
        return []
    swept = set(comparison["ratio_test"])
    missing = [what for column, what in (
        ("x1_model_dice", "the x1 model's columns need 'pretrained' in experiments"),
        ("ratio_model_dice", "a ratio's model needs 'train' and that ratio in train_ratios"))
        if comparison[column].isna().all()]
    return [Section(
        "3b. One model for every ratio", f"One model trained on patches from a ratio drawn "
        f"at random for each ({_mixed_ratios_note(config, swept)}; the x1 data's split, "
        f"normalisation and recipe; {_mixed_start_note(config)}), tested "
        "at every ratio. Beside it, on the same test cases: the x1 model "
        "(the pretrained experiment's rows) and the model trained at that ratio (where one "
        "was), each as the paired difference 'mixed minus it' with its 95% interval (trained "
        "models as the replication unit, as in the statistics above). A positive interval: "
        "the mixed model is better there; one that holds 0: no difference shown."
        + (f" Empty columns: {'; '.join(missing)}." if missing else ""),
        comparison.assign(stored=stored_column(comparison["ratio_test"], notes)).round(4),
        figures.plot_mixed(comparison, out / "mixed_dice", notes))]


def _segmentation_sections(config: StudyConfig, results: pd.DataFrame,
                           footprints: pd.DataFrame, out: Path, notes: dict[float, str],
                           ) -> list[Section]:
    """Sections 2-5; ``notes``: ratios stored losslessly, labelled in tables and curves."""
    if results.empty:
        return [Section("2-5. Segmentation", "Not run: no dataset is marked for training or "
                        "no segmentation experiment was asked for.")]
    request = config.train_request(config.train_folds[0])
    recipe = config.backend.recipe(request)
    iterations = request.epochs * request.iterations_per_epoch
    used = results[(results["experiment"] == "train") & (results["class"] == "mean")
                   & (results["metric"] == "dice")]
    test_cases = used.loc[pd.to_numeric(used["value"], errors="coerce").notna(),
                          "case"].nunique()
    shape = (f"patch {'x'.join(map(str, recipe['patch_size']))}" if "patch_size" in recipe
             else f"nnU-Net {recipe.get('configuration')}, plans {recipe.get('plans')}")
    budget_note = (f"Backend {config.backend.name}. Training budget: {request.epochs} epochs x "
                   f"{request.iterations_per_epoch} iterations = {iterations} iterations "
                   f"per model (the paper: {PAPER_ITERATIONS}), {shape}, folds "
                   f"{list(config.train_folds)} of {config.folds}, seeds "
                   f"{list(config.training_seeds)}, {test_cases} test cases.")
    if iterations < PAPER_ITERATIONS / 10 or test_cases < config.min_test_cases:
        budget_note += (" This run is far too short (or has too few test cases) to support "
                        "conclusions about compression: treat its Dice values as a check "
                        "that the pipeline works, not as evidence.")
    sections = []
    if "train" in config.experiments:
        sections.append(Section(
            "2. Train on compressed data", "One model per ratio, tested on held-out cases at "
            "the same ratio; mean Dice per class (Table 1). Two summaries: "
            f"'{seg.MEAN_OVER_CLASSES}' is the mean over classes of the per-class means, the "
            "paper's and nnU-Net's convention (compare it with the paper's 0.87 on AMOS); "
            f"'{seg.MEAN_OVER_CASES}' is the mean over test cases of each case's mean over the "
            "classes it contains (the statistics below use it). " + budget_note
            + _lossless_note(notes),
            _label_ratio_columns(seg.summarise_dice(results, "train"), notes),
            figures.plot_dice_by_ratio(results, "train", out / "train_dice",
                                       "Dice of models trained at each ratio", notes)))
        tests = non_inferiority(results, config.margin, tail_drop=config.tail_drop,
                                tail_limit=config.tail_limit,
                                assumed_model_sd=config.assumed_model_sd)
        sections.append(Section(
            "Statistics: non-inferiority against ratio 1",
            "Per-case paired Dice difference (each model at ratio R on R minus the model of "
            "the same fold and seed at x1 on x1), per class and for the per-case mean over "
            "classes ('mean'), over the cases with a Dice at both ratios ('cases'), 95% "
            "interval with trained models as the replication unit (false non-inferiority "
            "measured at 2.4-2.6% at the margin, 0.0-0.1% with 15% of cases failing: "
            "docs/study.md), margin "
            f"{config.margin:g} Dice. {_model_note(config, tests)} {_verdict_rule(config)}"
            f"{_skew_note(tests)}{_safe_verdict(config, tests)}",
            tests.assign(stored=stored_column(tests["ratio"], notes)).round(4),
            figures.plot_non_inferiority(tests, config.margin, out / "non_inferiority",
                                         notes)))
    if "cross" in config.experiments:
        for dataset in results["dataset"].unique():
            matrix = seg.cross_matrix(results, dataset)
            if matrix.empty:
                continue
            matrix = matrix.rename(index=lambda r: _train_label(r, notes),
                                   columns=lambda r: f"test {ratio_label(r, notes)}")
            sections.append(Section(
                f"3. Cross-ratio matrix: {dataset}", "Mean Dice of the model trained at one "
                "ratio (rows) on test data at another (columns) (Fig. 3), with its 95% "
                "interval (trained models as the replication unit, as in the statistics "
                "above).",
                _cross_table(results, dataset, config, notes),
                figures.plot_cross_matrix(matrix, out / f"cross_{dataset}",
                                          f"{dataset}: train ratio x test ratio")))
    if "mixed" in config.experiments:
        sections += _mixed_section(config, results, out, notes)
    if "pretrained" in config.experiments and ("model" not in config.pretrained
                                               or "pretrained" in set(results["experiment"])):
        source = config.pretrained.get("checkpoint", "the ratio-1 model of this study")
        table = _with_intervals(seg.mean_by(results, "pretrained", "ratio_test"), results,
                                "pretrained", "ratio_test", 0.0)
        sections.append(Section(
            "4. Pretrained model on compressed inputs", f"Model: {source}; mean Dice per test "
            "ratio (Table 2) with its 95% interval: a t-interval over the test cases for one "
            "model; over the fold-level means where the study's ratio-1 models of several "
            "folds or seeds each predict their own test cases.",
            table.assign(stored=stored_column(table["ratio_test"], notes)) if len(table)
            else table,
            figures.plot_dice_by_ratio(results, "pretrained", out / "pretrained_dice",
                                       "Pretrained model on compressed inputs", notes)))
    if "budget" in config.experiments and not footprints.empty:
        means = _with_intervals(seg.mean_by(results, "budget", "budget_fraction"), results,
                                "budget", "budget_fraction", config.assumed_model_sd)
        means["arm"] = means["experiment"].str.split(":").str[1]
        stored = footprints.groupby(["dataset", "budget_fraction", "arm"]).agg(
            ratio=("ratio", "mean"), train_cases=("cases", "mean"), bytes=("bytes", "mean"),
            real_share=("share", "mean"))
        table = means.drop(columns=["experiment"]).join(
            stored, on=["dataset", "budget_fraction", "arm"])
        comparison = compare_budget_arms(results,
                                         assumed_model_sd=config.assumed_model_sd)
        sections.append(Section(
            "5. Storage budget", "Equal measured bytes: for a budget of a share of the fold's "
            "training data at raw 16-bit size, the few-shot arm takes as many uncompressed "
            "cases as fit at their lossless JPEG 2000 size; the compressed arm takes every "
            "training case at the ratio searched for so that its stored bytes equal the "
            f"few-shot arm's within {TOLERANCE:.0%} (not 1 / share). 'real_share' is each "
            "arm's bytes over the raw bytes of all training cases; 'ratio' the compressed "
            "arm's. Both are tested on the same uncompressed hold-out; each arm's mean Dice "
            "and the paired difference per test case get a 95% interval (trained models as "
            "the replication unit, as in the statistics above), and an arm is called better "
            "only when the difference's interval excludes 0. "
            + _budget_verdict(comparison),
            table.round(4), figures.plot_budget(means, out / "budget")))
        if not comparison.empty:
            sections.append(Section(
                "Statistics: equal-storage arms", "Paired per test case: Dice(compressed arm) "
                "- Dice(few-shot arm) on the uncompressed hold-out.", comparison.round(4)))
    return sections


def _picture_sections(config: StudyConfig, out: Path, plan: seg.SegmentationPlan,
                      ) -> list[Section]:
    """One slice per dataset at x1 to x100 with its error map; contours of the x1 model and
    of the model at the highest training ratio on one test case."""
    folder = out / "pictures"
    folder.mkdir(exist_ok=True)
    strips = []
    for sweep_json in sorted((out / "sweeps").glob("*/sweep.json")):
        name = sweep_json.parent.name
        sweep = seg.sweep_folders(name, sweep_json.parent)
        strips += pictures.plot_ratio_strip(sweep.by_ratio, folder / f"slices_{name}", name)
    sections = []
    if strips:
        sections.append(Section(
            "Pictures: one slice at each ratio", "The same slice (the first labelled case's, "
            "where its labels are largest) at x1, x10, x20, x50 and x100 where swept, above "
            "its absolute error against x1 on one colour scale (the paper's Fig. 1, right); "
            "CT in the abdomen window (W 400 / L 40), PSNR of the slice in the titles.",
            figures=strips))
    contours, drawn = [], set()
    if 1 in config.train_ratios and len(config.train_ratios) > 1:
        train = [row.evaluation for row in plan.rows if row.experiment == "train"]
        for evaluation in train:
            model = evaluation.model
            if model.ratio != 1:
                continue
            # the highest ratio trained on this dataset (one out of reach was not)
            highest = max(e.model.ratio for e in train if e.model.dataset == model.dataset)
            partner = next((e for e in train if e.model.ratio == highest > 1
                            and e.model.dataset == model.dataset
                            and e.model.request.fold == model.request.fold
                            and e.model.request.seed == model.request.seed), None)
            if partner is None or model.dataset in drawn:
                continue
            drawn.add(model.dataset)
            contours += pictures.plot_contours(
                [(1.0, evaluation.folder, evaluation.predictions),
                 (highest, partner.folder, partner.predictions)],
                folder / f"contours_{model.dataset}", model.dataset)
    if contours:
        sections.append(Section(
            "Pictures: predicted contours", "One held-out case: the model trained and "
            "tested at x1 against the one trained and tested at the highest ratio trained "
            "(fold and seed of the first repeat); dashed: ground truth, solid: prediction.",
            figures=contours))
    return sections


def _reader_section(config: StudyConfig) -> list[Section]:
    if "reader" not in config.experiments:
        return []
    folder = config.reader_results
    if folder is None:
        return [Section("6. Reader study", "No reader-study results were supplied "
                        "(reader_results in the config; `medlossy reader analyze` writes "
                        "them).")]
    scores = pd.read_csv(Path(folder) / "scores.csv")
    plots = [Path(folder) / "reader_study.png"]
    return [Section("6. Reader study", "Mean score per ratio pair (+1 correct, 0 cannot "
                    "decide, -1 wrong), from `medlossy reader analyze`.", scores,
                    [p for p in plots if p.exists()])]
