"""Parse the command line and dispatch to one thin function per command.

Exit status: 0 done, 1 a check that failed (``verify``, ``dataset verify``), 2 bad usage or
bad input (one line on stderr), 130 on SIGINT and 143 on SIGTERM (both unwound, so that no
partial output is left), 141 when the reader of stdout went away.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence

from medlossy import __version__
from medlossy.backends import backend_names
from medlossy.cli import commands
from medlossy.cli.entry import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    INTERRUPTED,
    Terminated,
    exit_on_sigterm,
)
from medlossy.cli.types import megabytes, positive_int
from medlossy.codecs import codec_names
from medlossy.datasets.sweep import STUDY_RATIOS
from medlossy.errors import CheckFailed, MedlossyError
from medlossy.evaluate.cli import add_evaluate_parsers
from medlossy.reader_study.cli import add_reader_parser
from medlossy.store.slice_store import DEFAULT_ZARR_FORMAT, ZARR_FORMATS

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
#: --modality everywhere: "auto" is metrics.detect_modality's one rule.
MODALITY_CHOICES = ("auto", "CT", "MR", "OTHER")
_TEMPORARY = re.compile(r"(^|/)\.([^/]+?)\.partial-[0-9a-f]{8}[^/]*$")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with "(default: X)", unless it already says "default:" (flags
    and options without a default have none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default  # by identity: a default of 0 is shown, False is a flag's
        unset = default is None or default is False or default is argparse.SUPPRESS or (
            isinstance(default, float) and math.isnan(default))  # NaN: "not given"
        if unset or "default:" in text.lower():
            return text
        return f"{text} (default: %(default)s)".lstrip()


def subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every parser below it, depth first."""
    found = [parser]
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                found += subparsers_of(child)
    return found


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or notes (results are still printed)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes/threads to use (default: all cores)")


def _add_store_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zarr-version", type=int, choices=ZARR_FORMATS,
                        default=DEFAULT_ZARR_FORMAT,
                        help="store layout: 2, one file per slice or tile (OME-Zarr 0.4); 3, "
                             "the same codestreams inside shard files with an index "
                             f"(OME-Zarr 0.5) (default: {DEFAULT_ZARR_FORMAT})")
    parser.add_argument("--shard-slices", type=positive_int, default=None, metavar="N",
                        help="with --zarr-version 3: one shard file per N slices (rounded up "
                             "to whole 3D blocks) (default: one shard for the whole volume)")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlossy",
        description="Lossy compression of 3D CT/MR at exact ratios, and what it costs.")
    parser.add_argument("--version", action="version", version=f"medlossy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = sub.add_parser("compress", help="compress a volume into a store",
                              description="Compress a NIfTI/NRRD file or DICOM series folder "
                                          "into a Zarr store of JPEG 2000 slices (or another "
                                          "codec's slices or blocks, --codec).")
    compress.add_argument("input", help=".nii, .nii.gz, .nrrd, or a folder of DICOM files")
    compress.add_argument("output", help="store to create (a folder, e.g. ct_r20.zarr, or a "
                                         "new writable fsspec URL: s3://..., not http), or "
                                         "with --format dicom a DICOM series folder")
    target = compress.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=_positive_float,
                        help="raw 16-bit bytes / stored bytes, e.g. 20")
    target.add_argument("--psnr", type=_positive_float, help="target PSNR in dB (study's)")
    target.add_argument("--lossless", action="store_true", help="bit-exact")
    target.add_argument("--max-error", type=_positive_float,
                        help="largest absolute error, in the volume's units (jpegls, sperr, "
                             "sz3, zfp; see `medlossy codecs`)")
    compress.add_argument("--allocation", choices=("psnr", "equal", "optimal"),
                          default="psnr",
                          help="psnr: spread bytes for equal distortion per slice; equal: "
                               "give every slice the same ratio; optimal: pick per slice the "
                               "better of both (slower, never worse)")
    compress.add_argument("--modality", choices=MODALITY_CHOICES, default="auto",
                          help="decides the PSNR peak (CT: 4096, others: max - min); auto "
                               "(default): a DICOM series' own Modality, else CT when the "
                               "values are Hounsfield units, else OTHER")
    compress.add_argument("--range", dest="data_range", type=_positive_float,
                          help="PSNR peak r for MR/other (the dataset's max - min; default: "
                               "the volume's max - min, 4096 for CT)")
    compress.add_argument("--codec", choices=codec_names(), default=None,
                          help="see `medlossy codecs`; blosc (lossless zstd, any dtype) is "
                               "chosen for --lossless on data JPEG 2000 cannot hold exactly "
                               "(fractional floats, integers beyond 16 bits) (default: "
                               "jpeg2k)")
    compress.add_argument("--force", action="store_true", help="replace an existing output")
    compress.add_argument("--format", choices=("store", "dicom"), default="store",
                          help="a Zarr store, or a DICOM series folder with JPEG 2000 "
                               "(.4.91/.4.90) or HTJ2K (.4.203/.4.201) frames")
    compress.add_argument("--multiframe", action="store_true",
                          help="with --format dicom: one Enhanced CT/MR object instead of one "
                               "file per slice (volumes neither CT nor MR are always one "
                               "multi-frame Secondary Capture object)")
    compress.add_argument("--allow-gaps", action="store_true",
                          help="accept a DICOM series with missing slices or uneven spacing "
                               "(the store records every slice's true position)")
    compress.add_argument("--tile", type=positive_int, default=None, metavar="N",
                          help="store each slice as NxN tiles, one codestream each, so that "
                               "patch reads decode only the tiles they touch (jpeg2k, htj2k)")
    _add_store_format(compress)
    _add_common(compress)
    _add_json(compress)
    compress.set_defaults(handler=commands.compress)

    decompress = sub.add_parser("decompress", help="decode a store to NIfTI or NRRD")
    decompress.add_argument("store", help="a medlossy store (a .zarr folder)")
    decompress.add_argument("output", help=".nii, .nii.gz or .nrrd, or a folder with "
                                           "--format dicom")
    decompress.add_argument("--format", choices=("file", "dicom"), default="file",
                            help="a volume file named by its suffix, or an uncompressed "
                                 "DICOM series folder")
    decompress.add_argument("--multiframe", action="store_true",
                            help="with --format dicom: one Enhanced CT/MR object")
    decompress.add_argument("--force", action="store_true", help="replace an existing output")
    _add_common(decompress)
    _add_json(decompress)
    decompress.set_defaults(handler=commands.decompress)

    info = sub.add_parser("info", help="what a store or medlossy DICOM series holds and what "
                                       "it cost")
    info.add_argument("store", help="a medlossy store, or a DICOM series folder that "
                                    "compress/decompress --format dicom wrote")
    _add_json(info)
    info.set_defaults(handler=commands.info)

    verify = sub.add_parser("verify", help="check every slice of a store against its CRC-32 "
                                           "(exit 1 when one fails)")
    verify.add_argument("store", help="a medlossy store, or a DICOM series folder that "
                                      "compress/decompress --format dicom wrote (every frame "
                                      "decoded, its recorded ratio checked)")
    _add_json(verify)
    verify.set_defaults(handler=commands.verify)

    psnr = sub.add_parser("psnr", help="PSNR (and MSE, max error) of a volume against another")
    psnr.add_argument("reference", help="the original: a volume file (.nii, .nii.gz, "
                                        ".nrrd), a DICOM series folder or a medlossy store "
                                        "(a folder or a URL)")
    psnr.add_argument("test", help="the volume to measure, in any of those forms; reoriented "
                                   "onto the reference's voxel grid by the two affines "
                                   "(refused when the grids differ otherwise)")
    psnr.add_argument("--modality", choices=MODALITY_CHOICES, default="auto",
                      help="decides the PSNR peak r: CT uses 4096, the others the reference's "
                           "max - min; auto (default): a store's recorded modality and r, "
                           "else CT when the reference's values are Hounsfield units")
    psnr.add_argument("--range", dest="data_range", type=_positive_float,
                      help="PSNR peak r (MR: max - min over the dataset; default: see "
                           "--modality)")
    psnr.add_argument("--json", action="store_true", help="machine-readable output")
    psnr.set_defaults(handler=commands.psnr)

    study = sub.add_parser("study", help="run the study's experiments and write a report",
                           description="Run every experiment of a study config (TOML) and "
                                       "write report.md/report.html, figures and a tidy "
                                       "results table. Reruns resume from cached units.")
    study.add_argument("config", nargs="?", help="study config (TOML); see docs/study.md")
    study.add_argument("--demo", action="store_true",
                       help="the built-in demo: real CT/MR from PyPI + a synthetic cohort")
    study.add_argument("--out", default="study", help="output folder (default: study)")
    study.add_argument("--only", default=None,
                       help="comma-separated experiments to run: quality, train, cross, "
                            "pretrained, budget, reader")
    study.add_argument("--scheduler", default=None,
                       help="Dask scheduler address: compression units, and training and "
                            "prediction units as tasks needing one GPU (dask worker "
                            "--resources GPU=1)")
    study.add_argument("--gpus", default=None,
                       help="run training and prediction units one per local GPU, e.g. 0,1")
    study.add_argument("--dry-run", action="store_true",
                       help="list every unit, which are cached, GPU-hours and storage; run "
                            "nothing")
    study.add_argument("--plan", action="store_true",
                       help="simulate the verdicts of the configured design (cases, folds, "
                            "seeds) at --effect: power, detectable margin; run nothing")
    study.add_argument("--effect", type=float, default=0.0,
                       help="--plan: true mean Dice difference of every ratio")
    study.add_argument("--model-sd", type=float, default=None,
                       help="--plan: model-to-model sd of a mean Dice difference (default: "
                            "the config's assumed_model_sd, 0.02)")
    study.add_argument("--case-sd", type=float, default=0.02,
                       help="--plan: sd of the per-case Dice differences")
    study.add_argument("--cache", default=None, help="demo download cache")
    _add_common(study)
    study.set_defaults(handler=commands.study)

    train = sub.add_parser("train", help="train a segmentation model on one dataset/ratio",
                           description="Train on the training cases of one fold. The defaults "
                                       "are the study's recipe (300 epochs x 250 iterations); "
                                       "pass fewer for a quick CPU run. Reruns resume from "
                                       "the last epoch's checkpoint.")
    train.add_argument("dataset", help="nnU-Net raw dataset folder, or SWEEP/r20")
    train.add_argument("--out", required=True, help="model folder")
    train.add_argument("--backend", choices=[*backend_names(), "monai"], default="builtin",
                       help="builtin: the MONAI U-Net ('monai' is its old name); nnunet: "
                            "nnU-Net v2 with the study's trainer (see docs/study.md)")
    train.add_argument("--fold", type=int, default=0, help="fold of the study's split")
    train.add_argument("--folds", type=int, default=3, help="folds of the study's split")
    train.add_argument("--epochs", type=int, default=300, help="training epochs")
    train.add_argument("--iterations", type=int, default=250, help="iterations per epoch")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                       help="where to train (default: auto, a GPU when there is one)")
    builtin = train.add_argument_group("built-in backend")
    builtin.add_argument("--preset", choices=("lowres", "fullres"), default=None,
                         help="resolution preset (default: lowres)")
    builtin.add_argument("--batch-size", type=int, default=None,
                         help="patches per iteration (default: the preset's, 2)")
    builtin.add_argument("--patch-size", default=None, help="e.g. 64,64,64")
    builtin.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    builtin.add_argument("--mixed", nargs="+", default=(), metavar="DATASET",
                         help="the same cases at other ratios (e.g. SWEEP/r5 SWEEP/r20): one "
                              "model trained on patches from a ratio drawn at random")
    builtin.add_argument("--mixed-weights", default=None, metavar="W,W,...",
                         help="how often each ratio is drawn: DATASET's first, then --mixed's "
                              "(default: equally often)")
    builtin.add_argument("--start-from", default=None, metavar="MODEL",
                         help="continue this model (trained on DATASET's split) for --epochs "
                              "more, from its last learning rate")
    nnunet = train.add_argument_group("nnunet backend")
    nnunet.add_argument("--configuration", "--config", dest="configuration", default=None,
                        help="nnU-Net configuration (default: 3d_lowres, the paper's)")
    nnunet.add_argument("--plans", choices=("per-ratio", "x1"), default=None,
                        help="plan this dataset or reuse --reference's plans (default: "
                             "per-ratio)")
    nnunet.add_argument("--reference", default=None,
                        help="the uncompressed dataset, for --plans x1")
    nnunet.add_argument("--validation-iterations", type=int, default=None,
                        help="nnU-Net's pseudo-validation batches per epoch (default: 50)")
    nnunet.add_argument("--preprocessed", default=None, metavar="blosc2|lossless|xR",
                        help="keep nnU-Net's preprocessed training images as its blosc2 "
                             "float32 or as 16-bit stores, lossless or at ratio R, decoded by "
                             "nnU-Net's loader (default: blosc2)")
    nnunet.add_argument("--preprocessed-codec", choices=("htj2k", "jpeg2k"), default=None,
                        help="codec of those stores (default: htj2k)")
    nnunet.add_argument("--preprocessed-tile", type=int, default=None,
                        help="their tile side, 0 = whole slices (default: 128)")
    nnunet.add_argument("--decode-cache", type=megabytes, default=None,
                        metavar="MB", help="each loader worker keeps up to MB of decoded "
                                           "slices/tiles of those stores for later patches "
                                           "(memory: workers x MB; default: "
                                           "$MEDLOSSY_DECODE_CACHE_MB, else 0: none)")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bars or notes (results are still printed)")
    train.set_defaults(handler=commands.train)

    predict = sub.add_parser("predict", help="segment a dataset with a trained model")
    predict.add_argument("model", help="model folder written by medlossy train")
    predict.add_argument("dataset", help="nnU-Net raw dataset folder, or SWEEP/r50")
    predict.add_argument("--out", required=True, help="folder for CASE.nii.gz label maps")
    predict.add_argument("--cases", choices=("test", "all"), default="test",
                         help="the model's held-out fold cases or every case")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="where to predict (auto: a GPU when there is one)")
    predict.add_argument("--quiet", action="store_true",
                         help="no progress bars or notes (results are still printed)")
    predict.set_defaults(handler=commands.predict)

    dataset = sub.add_parser("dataset", help="a whole dataset at every ratio")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True,
                                         metavar="DATASET_COMMAND")
    sweep = dataset_sub.add_parser(
        "compress", help="compress every image at every ratio",
        description="Compress an nnU-Net raw dataset (or a folder with images/ and labels/) "
                    "at every ratio: stores, nnU-Net datasets (decoded images, or links to "
                    "the stores with --layout stores), manifest. Rerunning "
                    "resumes; finished images are verified by checksum and skipped.")
    sweep.add_argument("source", help="nnU-Net raw dataset folder, or images/ + labels/ folder")
    sweep.add_argument("--ratios", default=",".join(str(r) for r in STUDY_RATIOS),
                       help="comma-separated ratios, 1 = lossless (default: the study's)")
    sweep.add_argument("--out", required=True, help="sweep folder to write")
    sweep.add_argument("--base-id", type=int, default=None,
                       help="nnU-Net dataset id of the first ratio; the others follow "
                            "(default: from a hash of the source's path, within 500..999, "
                            "skipping ids in this sweep and in $nnUNet_raw/_preprocessed/"
                            "_results)")
    sweep.add_argument("--modality", choices=("auto", "CT", "MR"), default="auto",
                       help="modality of a plain images/ folder or of DICOM studies, written "
                            "to dataset.json channel_names (nnU-Net plans CT normalisation "
                            "for CT only) and deciding the PSNR peak (CT: 4096, MR: max - "
                            "min over the dataset); auto (default): a DICOM series' own "
                            "Modality, else CT when every case's values are Hounsfield "
                            "units, MR when none is (cases that disagree are refused); "
                            "nnU-Net datasets name their channels")
    sweep.add_argument("--crop-to-label", default=None, metavar="VALUES",
                       help="crop images and labels to these label values first, e.g. 1,2 "
                            "(the study crops LiTS to the liver)")
    sweep.add_argument("--margin", type=float, default=10.0,
                       help="margin around the crop, in mm (default: 10)")
    sweep.add_argument("--scheduler", default=None,
                       help="Dask scheduler address (tcp://host:8786); default: local processes")
    sweep.add_argument("--labels", choices=("seg", "rtstruct"), default=None,
                       help="SOURCE is a folder of DICOM studies (one per case): take labels "
                            "from their DICOM SEG or RTSTRUCT objects")
    sweep.add_argument("--label-map", default=None, metavar="JSON",
                       help='segment/ROI name -> label id, e.g. {"liver": 1} (default: every '
                            "name found, sorted, numbered from 1)")
    sweep.add_argument("--skip-bad", action="store_true",
                       help="skip cases with bad input and list them in the report")
    sweep.add_argument("--codec", choices=codec_names(), default=None,
                       help="codec of every lossy ratio (default: jpeg2k; see `medlossy "
                            "codecs`); ratio 1 is stored losslessly as without --codec")
    sweep.add_argument("--tile", type=positive_int, default=None, metavar="N",
                       help="store each slice as NxN tiles, one codestream each, for "
                            "training from the stores (jpeg2k, htj2k; each ratio is then "
                            "searched on its own, slower than the shared encode)")
    sweep.add_argument("--layout", choices=("nifti", "stores"), default="nifti",
                       help="how each ratio's nnU-Net dataset holds its images: nifti "
                            "(default): decoded .nii.gz copies; stores: links to the stores "
                            "(CASE_0000.mlstore), no decoded copy, read by nnU-Net through "
                            "medlossy's reader (see docs/data.md)")
    sweep.add_argument("--nnunet-raw", default=None, metavar="DIR",
                       help="register every ratio's dataset in this nnU-Net raw folder "
                            "(symlinks; an id it holds under another name is refused; "
                            "default: none)")
    _add_store_format(sweep)
    sweep.add_argument("--per-ratio-search", action="store_true",
                       help="search each ratio's rate on its own (the slower way before "
                            "one-encode sweeps) instead of cutting JPEG 2000 quality layers")
    _add_common(sweep)
    sweep.set_defaults(handler=commands.dataset_compress)
    report = dataset_sub.add_parser("report", help="per-ratio table of a sweep")
    report.add_argument("sweep", help="sweep folder written by dataset compress")
    _add_json(report)
    report.set_defaults(handler=commands.dataset_report)
    check = dataset_sub.add_parser("verify", help="re-check every checksum of a sweep (exit 1 "
                                                  "when one fails)")
    check.add_argument("sweep", help="sweep folder written by dataset compress")
    _add_json(check)
    check.set_defaults(handler=commands.dataset_verify)
    datalist = dataset_sub.add_parser(
        "datalist", help="a Decathlon-style datalist JSON per ratio, images = the stores",
        description="Write one datalist per ratio of a sweep (training and validation: the "
                    "fold's labelled cases with their label file; test: imagesTs), images "
                    "naming the stores, for MONAI's load_decathlon_datalist and "
                    "LoadImaged(reader=MedlossyStoreReader()) (docs/loading.md).")
    datalist.add_argument("sweep", help="sweep folder written by dataset compress")
    datalist.add_argument("--out", default=None,
                          help="folder for r<ratio>.json (default: SWEEP/datalists)")
    datalist.add_argument("--folds", type=positive_int, default=3,
                          help="k of the study's k-fold split of the labelled cases "
                               "(default: 3)")
    datalist.add_argument("--fold", type=int, default=0,
                          help="the fold whose held-out cases are the validation list "
                               "(default: 0)")
    _add_json(datalist)
    datalist.set_defaults(handler=commands.dataset_datalist)

    add_reader_parser(sub)
    add_evaluate_parsers(sub)

    codecs = sub.add_parser("codecs", help="available codecs, their modes, CPU/GPU, extras")
    _add_json(codecs)
    codecs.set_defaults(handler=commands.list_codecs)

    bench = sub.add_parser("bench", help="measure medlossy on your data")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    bench_codecs = bench_sub.add_parser(
        "codecs", help="ratio vs PSNR and encode/decode Mvox/s of every codec on a volume",
        description="Compress VOLUME at each ratio with each codec (the full compress: "
                    "search, verification, store), decode it back, and write a table "
                    "(codecs.csv, codecs.md) and a figure (codecs.png) to --out.")
    bench_codecs.add_argument("volume", help=".nii, .nii.gz, .nrrd, or a DICOM series folder")
    bench_codecs.add_argument("--ratios", default="5,10,20,50,100",
                              help="comma-separated target ratios (default: 5,10,20,50,100)")
    bench_codecs.add_argument("--codecs", default=None,
                              help="comma-separated codecs (default: every installed codec "
                                   "with a ratio mode)")
    bench_codecs.add_argument("--out", default="bench-codecs", help="output folder")
    bench_codecs.add_argument("--workers", type=int, default=1,
                              help="processes/threads per compress (default: 1, speeds per "
                                   "core)")
    bench_codecs.add_argument("--modality", choices=MODALITY_CHOICES,
                              default="auto", help="decides the PSNR peak (CT: 4096)")
    bench_codecs.add_argument("--quiet", action="store_true", help="no progress lines")
    bench_codecs.set_defaults(handler=commands.bench_codecs)
    loader = bench_sub.add_parser(
        "loader", help="training patch supply (Mvox/s) decoded on the fly from stores",
        description="Draw random training patches from a store (or a folder of stores), "
                    "decoding only the slices each patch needs, for --seconds after the first "
                    "patch; print patches and Mvox/s.")
    loader.add_argument("store", help="a store or a folder of *.zarr stores")
    loader.add_argument("--patch", default="64,160,160", help="z,y,x voxels (default: "
                                                              "64,160,160)")
    loader.add_argument("--workers", type=int, default=2,
                        help="DataLoader worker processes (0: decode in this process)")
    loader.add_argument("--threads", type=int, default=1, help="decoding threads per worker")
    loader.add_argument("--level", type=int, default=0,
                        help="resolution level to decode (1 = half size in-plane)")
    loader.add_argument("--labels", default=None, help="folder of label volumes CASE.nii.gz")
    loader.add_argument("--seconds", type=_positive_float, default=10.0,
                        help="how long to measure, after the first patch")
    loader.add_argument("--decode-cache", type=megabytes, default=None, metavar="MB",
                        help="each worker keeps up to MB of decoded slices/tiles for later "
                             "patches (default: $MEDLOSSY_DECODE_CACHE_MB, else 0: none)")
    loader.add_argument("--json", action="store_true", help="print JSON")
    loader.set_defaults(handler=commands.bench_loader)

    data = sub.add_parser("data", help="example data")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    demo = data_sub.add_parser("demo", help="real CT/MR from the TotalSegmentator archive on "
                                            "PyPI, laid out as nnU-Net raw datasets")
    demo.add_argument("--out", default="demo-data", help="where to write the datasets")
    demo.add_argument("--cache", default=None,
                      help="download cache (default: ~/.cache/medlossy)")
    demo.add_argument("--quiet", action="store_true", help="no progress or notes")
    demo.set_defaults(handler=commands.data_demo)
    brain = data_sub.add_parser("brain", help="a real T1 brain MR (Colin27) from Debian's "
                                              "mricron-data, as an nnU-Net raw dataset")
    brain.add_argument("--out", default="brain-data", help="where to write the dataset "
                                                           "(default: brain-data)")
    brain.add_argument("--cache", default=None,
                       help="download cache (default: ~/.cache/medlossy)")
    brain.add_argument("--labels", action="store_true",
                       help="add FSL BET's brain mask as the label 'brain' (default: "
                            "unlabelled, in imagesTs)")
    brain.set_defaults(handler=commands.data_brain)
    phantom = data_sub.add_parser("phantom", help="a SYNTHETIC cohort of abdominal CTs with "
                                                  "exact labels, as an nnU-Net raw dataset")
    phantom.add_argument("--cases", type=int, default=24, help="subjects (default: 24)")
    phantom.add_argument("--seed", type=int, default=0, help="cohort seed (default: 0)")
    phantom.add_argument("--out", default="phantom-data", help="where to write the dataset")
    phantom.add_argument("--shape", default="96,96,64", help="voxels L,P,S (default: 96,96,64)")
    phantom.add_argument("--spacing", default="3", help="mm, one or three numbers (default: 3)")
    phantom.add_argument("--phase", choices=("native", "portal-venous"), default="native",
                         help="contrast phase (default: native, as calibrated; portal-venous: "
                              "organs and vessels enhanced, typical values)")
    phantom.add_argument("--id", dest="dataset_id", type=int, default=950,
                         help="nnU-Net dataset id (default: 950 -> Dataset950_Phantom)")
    phantom.add_argument("--quiet", action="store_true", help="no progress or notes")
    phantom.set_defaults(handler=commands.data_phantom)
    for each in subparsers_of(parser):
        each.formatter_class = _HelpWithDefaults
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        arguments.handler(arguments)
    except MedlossyError as error:
        print(f"medlossy: error: {error}", file=sys.stderr)
        return EXIT_CHECK_FAILED if isinstance(error, CheckFailed) else EXIT_BAD_INPUT
    except ValueError as error:
        print(f"medlossy: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # Whoever read our output stopped (``medlossy info --json X | head -1``): not an error
        # of ours, and nothing more to say. Point stdout at /dev/null so that Python's final
        # flush cannot fail again, and exit like a process killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as interruption:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_TERMINATED if isinstance(interruption, Terminated) else EXIT_INTERRUPTED
    except OSError as error:  # an unwritable folder, a full disk: the file and the reason
        # name the output the user gave, not its temporary (see atomic.py)
        name = _TEMPORARY.sub(r"\1\2", str(error.filename)) if error.filename else ""
        where = f"{name}: " if name else ""
        print(f"medlossy: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
