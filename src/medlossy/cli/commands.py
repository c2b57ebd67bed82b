"""One thin function per command: check arguments, call the library, print the result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medlossy.codecs import get_codec
from medlossy.compression import Target, compress_volume
from medlossy.decompression import decompress_to_file
from medlossy.errors import CheckFailed, MedlossyError
from medlossy.io import read_volume
from medlossy.metrics import (
    AUTO_CT,
    AUTO_NOT_CT,
    describe_peak,
    peak_rule,
)
from medlossy.outputs import (
    check_not_input,
    check_own_folder,
    check_replaceable,
    is_decompressed_volume,
    is_dicom_output,
    is_store,
    medlossy_output,
)
from medlossy.store import MetadataMismatch, SliceStore
from medlossy.store.remote import folder_only, is_url, local_folder
from medlossy.store.slice_store import DEFAULT_ZARR_FORMAT
from medlossy.volume import Volume

#: How a store written before metadata checksums is reported (readable, not refused).
_UNPROTECTED = "unprotected (written before metadata checksums: edits cannot be detected)"


def _say(arguments: argparse.Namespace, text: str) -> None:
    """A note or warning: stderr, silenced by --quiet."""
    if not getattr(arguments, "quiet", False):
        print(text, file=sys.stderr)


def _finite(value: object) -> object:
    """``value`` with every NaN or infinity as None (JSON has neither), numpy scalars as
    Python's."""
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _print_json(document: dict | list) -> None:
    """The command's one result document on stdout."""
    print(json.dumps(_finite(document), indent=2, allow_nan=False))


def _result(arguments: argparse.Namespace, document: dict, text: str) -> None:
    """A command's result on stdout, as JSON with --json, else as ``text``; --quiet does not
    silence it."""
    if getattr(arguments, "json", False):
        _print_json(document)
    else:
        print(text)


def _refuse_existing(output: str, force: bool, source: str, *, folder: bool = True) -> None:
    """An existing output is replaced only with --force, only if medlossy wrote it, and never
    when it is (or holds) the input."""
    if folder:
        check_replaceable(output, force, medlossy_output,
                          "a medlossy store or DICOM series folder")
    else:
        check_replaceable(output, force, is_decompressed_volume,
                          "a volume file written by medlossy decompress")
    check_not_input(output, [source])


def _target(arguments: argparse.Namespace) -> Target:
    if arguments.lossless:
        return Target("lossless")
    if arguments.psnr is not None:
        return Target("psnr", arguments.psnr)
    if getattr(arguments, "max_error", None) is not None:
        return Target("max_error", arguments.max_error)
    if arguments.ratio <= 1:
        raise MedlossyError(None, f"--ratio must be greater than 1 for lossy compression "
                                  f"(got {arguments.ratio:g}); use --lossless for exact storage")
    return Target("ratio", arguments.ratio, arguments.allocation)


def _note_dicom_input(arguments: argparse.Namespace, volume: Volume) -> None:
    ignored = volume.header.get("ignored", [])
    if ignored:
        _say(arguments, f"note: left out {len(ignored)} non-image object(s): "
                        + ", ".join(ignored))
    if "irregular_spacing" in volume.header:
        _say(arguments, f"note: {volume.header['irregular_spacing']}; accepted (--allow-gaps), "
                        "true slice positions recorded in the store")


def _refuse_multiframe_without_dicom(arguments: argparse.Namespace) -> None:
    if arguments.multiframe and arguments.format != "dicom":
        raise MedlossyError(None, "--multiframe applies only to --format dicom")


#: Names of single files: compress writes a folder, so such an output is a slip.
_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm", ".mha", ".mhd")


def _refuse_file_name(arguments: argparse.Namespace) -> None:
    if arguments.output.lower().rstrip("/").endswith(_FILE_SUFFIXES):
        what = "a store (e.g. ct_r20.zarr)" if arguments.format == "store" \
            else "a DICOM series folder"
        raise MedlossyError(arguments.output, f"is named like a volume file, but compress "
                                              f"writes {what}; `medlossy decompress` writes "
                                              ".nii.gz and .nrrd files")


def _refuse_store_format(arguments: argparse.Namespace) -> None:
    """Refuse shard and format options where they do nothing."""
    if arguments.shard_slices is not None and arguments.zarr_version != 3:
        raise MedlossyError(None, "--shard-slices applies only to --zarr-version 3 (format 2 "
                                  "writes one file per chunk)")
    if getattr(arguments, "format", "store") == "dicom" \
            and arguments.zarr_version != DEFAULT_ZARR_FORMAT:
        raise MedlossyError(None, "--zarr-version applies only to stores")


def compress(arguments: argparse.Namespace) -> None:
    _refuse_multiframe_without_dicom(arguments)
    _refuse_file_name(arguments)
    target = _target(arguments)
    if not is_url(arguments.output):  # a URL must be new or empty (``local_folder``)
        _refuse_existing(arguments.output, arguments.force, arguments.input)
    modality = "OTHER" if arguments.modality == "auto" else arguments.modality
    if arguments.format == "dicom" and arguments.tile is not None:
        raise MedlossyError(None, "--tile applies only to stores (DICOM frames are whole "
                                  "slices)")
    _refuse_store_format(arguments)
    if arguments.format == "dicom":
        _refuse_url_output(arguments.output, "DICOM files are")
        _compress_to_dicom(arguments, target, modality)
        return
    # a URL: the store is written here, then uploaded (http(s):// refused before any work)
    with local_folder(arguments.output, "a store") as output:
        volume = read_volume(arguments.input, modality, lazy=True,
                             allow_gaps=arguments.allow_gaps)
        _note_dicom_input(arguments, volume)
        recorded = volume.modality  # a DICOM series' own; else the values decide below
        attributes = compress_volume(volume, output, target, codec_name=arguments.codec,
                                     data_range=arguments.data_range,
                                     workers=arguments.workers,
                                     show_progress=not arguments.quiet, source=arguments.input,
                                     tile=arguments.tile, replace=arguments.force,
                                     zarr_format=arguments.zarr_version,
                                     shard_slices=arguments.shard_slices)
    achieved = attributes["achieved"]
    _say(arguments, f"note: {_chosen_peak(arguments, recorded, attributes)}")
    psnr = "inf (lossless)" if achieved["psnr_db"] is None else f"{achieved['psnr_db']:.2f} dB"
    _result(arguments, {"output": arguments.output, "format": "store",
                        "codec": attributes["codec"]["name"], "target": attributes["target"],
                        "tile": attributes.get("tile"), **achieved,
                        "encode_seconds": attributes["timing"]["encode_seconds"]},
            f"{arguments.output}: x{achieved['ratio']:.3f}, {achieved['stored_bytes']} "
            f"bytes, PSNR {psnr}, max error {achieved['max_abs_error']:g}"
            f"{_error_sources(achieved)}, encoded in "
            f"{attributes['timing']['encode_seconds']:g} s")
    if arguments.tile is not None and "tile" not in attributes:
        why = "covers whole slices here" if get_codec(attributes["codec"]["name"]).tiles \
            else f"does not apply to {attributes['codec']['name']} (whole slices, quick to decode)"
        _say(arguments, f"note: --tile {arguments.tile} {why}: stored untiled")
    if attributes["codec"]["name"] != (arguments.codec or "jpeg2k"):
        _say(arguments, f"note: stored with {attributes['codec']['standard']}: JPEG 2000 "
                        "lossless holds 16-bit integers only")
    if not achieved["target_reached"]:
        why = "lossless already fits the budget, so it was stored losslessly" \
            if attributes["codec"]["setting"]["mode"] == "lossless" \
            else "the codec's sizes step across the budget"
        target = attributes["target"]
        wanted = "lossless" if target["mode"] == "lossless" else \
            f"{target['mode']} {target['value']:g}".replace("ratio ", "x")
        _say(arguments, f"note: target {wanted} not reached: {why} (see `medlossy info`)")


def _chosen_peak(arguments: argparse.Namespace, recorded: str, attributes: dict) -> str:
    """How the store's modality and PSNR peak were chosen, in words (``detect_modality``
    gave the modality, ``data_range_for`` the peak)."""
    modality = attributes["modality"]
    if arguments.modality in ("CT", "MR"):
        how = "given"  # OTHER, like auto, lets CT values be recognised (compress_volume)
    elif recorded != "OTHER":
        how = "recorded in the input"
    else:
        how = AUTO_CT if modality == "CT" else AUTO_NOT_CT
    return describe_peak(modality, how, attributes["achieved"]["data_range"],
                         peak_rule(modality, arguments.data_range))


def _error_sources(achieved: dict) -> str:
    """Where a lossy store's error came from, when the 16-bit mapping itself lost any."""
    sources = achieved.get("error_sources")
    if not sources or not sources["intensity_mapping"]["max_abs_error"]:
        return ""
    mapping, codec = sources["intensity_mapping"], sources["codec"]
    return (f" (16-bit intensity mapping alone: max {mapping['max_abs_error']:g}, PSNR "
            f"{_db(mapping['psnr_db'])}; codec alone: max {codec['max_abs_error']:g}, PSNR "
            f"{_db(codec['psnr_db'])})")


def _db(value: float | None) -> str:
    return "inf" if value is None else f"{value:.2f} dB"


def _compress_to_dicom(arguments: argparse.Namespace, target: Target, modality: str) -> None:
    from medlossy.dicom_export import compress_to_dicom

    result = compress_to_dicom(arguments.input, arguments.output, target,
                               codec_name=arguments.codec, modality=modality,
                               data_range=arguments.data_range, workers=arguments.workers,
                               allow_gaps=arguments.allow_gaps,
                               show_progress=not arguments.quiet,
                               multiframe=arguments.multiframe, replace=arguments.force)
    psnr = "inf (lossless)" if result["psnr_db"] is None else f"{result['psnr_db']:.2f} dB"
    _result(arguments, {"output": arguments.output, "format": "dicom",
                        "codec": arguments.codec or "jpeg2k", **result},
            f"{arguments.output}: {result['files']} DICOM file(s) ({result['sop_class']}), "
            f"transfer syntax {result['transfer_syntax']}, x{result['ratio']:.3f} over pixel "
            f"data ({result['pixel_bytes']} bytes), PSNR {psnr}, max error "
            f"{result['max_abs_error']:g}")
    if result["sop_class"].startswith("Multi-frame Grayscale"):
        _say(arguments, "note: neither CT nor MR, so written as one Secondary Capture object; "
                        "pass --modality MR for MR Image Storage")
    if not result["target_reached"]:
        _say(arguments, "note: target not reached (lossless already fits the budget, or the "
                        "codec's sizes step across it)")


def _note_unprotected(path: str) -> None:
    """Say on stderr when a store's metadata has no checksum (an edited store is refused
    by ``SliceStore`` itself)."""
    if not SliceStore(path).protected:
        print(f"note: {path}: metadata {_UNPROTECTED}", file=sys.stderr)


def _refuse_url_output(output: str, what: str) -> None:
    """One line for an output named by a URL where only a local path is written."""
    if is_url(output):
        raise MedlossyError(output, f"{what} written to a local path, not a URL (stores "
                                    "are: compress and dataset compress take a writable "
                                    "fsspec URL)")


def decompress(arguments: argparse.Namespace) -> None:
    _refuse_url_output(arguments.output, "decoded volumes are")
    _refuse_multiframe_without_dicom(arguments)
    _refuse_existing(arguments.output, arguments.force, arguments.store,
                     folder=arguments.format == "dicom")
    _note_unprotected(arguments.store)
    if arguments.format == "dicom":
        from medlossy.dicom_export import store_to_dicom

        result = store_to_dicom(arguments.store, arguments.output, workers=arguments.workers,
                                multiframe=arguments.multiframe, replace=arguments.force)
        _result(arguments, {"output": arguments.output, "format": "dicom", **result},
                f"{arguments.output}: {result['files']} uncompressed DICOM file(s) "
                f"({result['sop_class']}){' (flagged lossy)' if result['lossy'] else ''}")
        return
    volume = decompress_to_file(arguments.store, arguments.output, workers=arguments.workers,
                                replace=arguments.force)
    _result(arguments, {"output": arguments.output, "format": "file",
                        "shape": list(volume.shape), "dtype": str(volume.array.dtype)},
            f"{arguments.output}: {volume.shape} {volume.array.dtype}")


def _info_document(path: str) -> dict:
    store = SliceStore(path)
    attributes = store.attributes
    geometry, achieved = attributes["geometry"], attributes["achieved"]
    return {
        "store": str(path),
        "shape": geometry["shape"],
        "spacing": geometry["spacing"],
        "orientation": geometry["orientation"],
        "axial_axis": geometry["axial_axis"],
        "dtype": attributes["intensity"]["original_dtype"],
        "modality": attributes["modality"],
        "codec": attributes["codec"],
        "target": attributes["target"],
        "achieved": achieved,
        "tile": attributes.get("tile"),
        "zarr_format": store.zarr_format,
        "shard_slices": store.shard_slices,
        "metadata": "checksum matches" if store.protected else _UNPROTECTED,
        # None at an HTTP URL: a server need not list a store's files
        "bytes_on_disk": store.stored_bytes(),
        "intensity": attributes["intensity"],
        "source": attributes["source"].get("file"),
        "software": attributes["software"],
        # Stores written since timings left the store (so that identical runs write
        # identical bytes) have no creation time.
        "created": attributes.get("created"),
    }


def _dicom_folder(path: str) -> bool:
    """A DICOM series folder that medlossy wrote (info and verify read those too)."""
    return Path(path).is_dir() and not is_store(Path(path)) and is_dicom_output(Path(path))


def _dicom_info(arguments: argparse.Namespace) -> None:
    from medlossy.dicom_output import describe_dicom_output

    document = describe_dicom_output(arguments.store)
    if arguments.json:
        _print_json(document)
        return
    ratio = "n/a (uncompressed pixel data)" if document["ratio"] is None \
        else f"x{document['ratio']:.3f} over pixel data"
    recorded = "none (lossless)" if not document["lossy"] \
        else f"x{document['recorded_ratio']:g} ({document['method']})"
    _print_rows([
        ("files", f"{document['files']} ({document['sop_class']})"),
        ("frames", f"{document['frames']} of {document['rows']} rows x "
                   f"{document['columns']} columns"),
        ("modality", document["modality"]),
        ("transfer syntax", f"{document['transfer_syntax_name']} "
                            f"({document['transfer_syntax']})"),
        ("achieved ratio", ratio),
        ("pixel bytes", f"{document['pixel_bytes']} (raw 16-bit: {document['raw_bytes']})"),
        ("lossy ratio recorded", recorded),
        ("derivation", document["derivation"]),
    ])


def _print_rows(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def info(arguments: argparse.Namespace) -> None:
    if _dicom_folder(arguments.store):
        _dicom_info(arguments)
        return
    try:
        _info(arguments)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        # The summary reads values the reader itself does not need (achieved, target):
        # damaged ones make the store's report, not medlossy, fail.
        raise MedlossyError(arguments.store, "corrupt store metadata (cannot report "
                                             f"{type(error).__name__}: {error})") from None


def _info(arguments: argparse.Namespace) -> None:
    document = _info_document(arguments.store)
    if arguments.json:
        _print_json(document)
        return
    achieved = document["achieved"]
    psnr = "inf (lossless)" if achieved["psnr_db"] is None else f"{achieved['psnr_db']:.2f} dB"
    met = "met" if achieved["target_reached"] else "NOT met"
    rows = [
        ("source", document["source"]),
        ("shape", " x ".join(map(str, document["shape"]))),
        ("spacing (mm)", " x ".join(f"{s:g}" for s in document["spacing"])),
        ("orientation", document["orientation"]),
        ("dtype / modality", f"{np.dtype(document['dtype']).name} / {document['modality']}"),
        ("codec", f"{document['codec']['name']} "
                  f"{document['codec'].get('wavelet', document['codec'].get('transform', ''))}"),
        ("tiles", "none (one codestream per slice)" if document["tile"] is None
                  else " x ".join(map(str, document["tile"])) + " per codestream"),
        ("zarr format", "2 (one file per chunk)" if document["zarr_format"] == 2
                        else f"3 (sharded, {document['shard_slices']} slices per shard)"),
        ("metadata", document["metadata"]),
        ("target", ", ".join(f"{k}={v}" for k, v in document["target"].items())),
        ("achieved ratio", f"x{achieved['ratio']:.3f} ({met})"),
        ("stored bytes", f"{achieved['stored_bytes']} (raw 16-bit: {achieved['raw_bytes']})"),
        ("bits per voxel", f"{achieved['bits_per_voxel']:.4f}"),
        (f"PSNR (r={achieved['data_range']:g})", psnr),
        ("MSE / max abs error", f"{achieved['mse']:g} / {achieved['max_abs_error']:g}"),
    ]
    for source, errors in achieved.get("error_sources", {}).items():
        rows.append((f"  from {source.replace('_', ' ')}",
                     f"PSNR {_db(errors['psnr_db'])}, MSE {errors['mse']:g}, max abs error "
                     f"{errors['max_abs_error']:g}"))
    _print_rows(rows)


def _failed(arguments: argparse.Namespace, document: dict, problem: str) -> CheckFailed:
    """A failed check: its document on stdout with --json; the returned error says it on
    stderr (exit 1)."""
    if getattr(arguments, "json", False):
        _print_json(document)
    return CheckFailed(None, problem)


def verify(arguments: argparse.Namespace) -> None:
    if _dicom_folder(arguments.store):
        _verify_dicom(arguments)
        return
    try:
        store = SliceStore(arguments.store)
    except MetadataMismatch as error:  # a check that failed (exit 1), not unreadable input
        document = {"store": arguments.store, "ok": False, "metadata": "changed",
                    "problems": [error.problem]}
        raise _failed(arguments, document, str(error)) from None
    bad = store.verify()
    slices = store.depth == 1 and not store.grid.tiled
    document = {"store": arguments.store, "ok": not bad, "slices": store.slices,
                "chunks": store.chunks,
                "bad": [i if slices else store.chunk_name(i) for i in bad],
                "metadata": "protected" if store.protected else "unprotected"}
    if bad:
        if slices:
            raise _failed(arguments, document, f"{arguments.store}: {len(bad)} corrupt or "
                          f"missing slice(s): {', '.join(map(str, bad[:20]))}")
        kind = "tile" if store.grid.tiled else "block"
        raise _failed(arguments, document, f"{arguments.store}: {len(bad)} corrupt or missing "
                      f"{kind}(s): " + ", ".join(store.chunk_name(i) for i in bad[:20]))
    held = f" in {store.chunks} blocks" if store.depth > 1 else \
        f" in {store.chunks} tiles" if store.grid.tiled else ""
    if store.protected:
        text = (f"{arguments.store}: all {store.slices} slices{held} and the metadata match "
                "their checksums")
    else:
        text = (f"{arguments.store}: all {store.slices} slices{held} match their checksums; "
                f"metadata {_UNPROTECTED}")
    _result(arguments, document, text)


def _verify_dicom(arguments: argparse.Namespace) -> None:
    from medlossy.dicom_output import check_dicom_output

    summary, problems = check_dicom_output(arguments.store)
    document = {"store": arguments.store, "ok": not problems, "problems": problems,
                **summary}
    if problems:
        raise _failed(arguments, document, f"{arguments.store}: {len(problems)} problem(s): "
                                           + "; ".join(problems[:5]))
    checked = "" if summary["ratio"] is None or not summary["lossy"] \
        else f", recorded ratio x{summary['recorded_ratio']:g} matches its pixel data"
    _result(arguments, document,
            f"{arguments.store}: all {summary['frames']} frames in {summary['files']} DICOM "
            f"file(s) decode{checked} (DICOM holds no medlossy checksum)")


def psnr(arguments: argparse.Namespace) -> None:
    from medlossy.evaluate.quality import volume_quality

    document = volume_quality(arguments.reference, arguments.test, modality=arguments.modality,
                              data_range=arguments.data_range)
    if document["reoriented"]:
        print(f"note: {arguments.test} reoriented to {arguments.reference}'s voxel frame "
              f"({document['reoriented']})", file=sys.stderr)
    print(f"note: {document.pop('note')}", file=sys.stderr)
    if arguments.json:
        print(json.dumps(document, indent=2))
        return
    value, peak = document["psnr_db"], document["data_range"]
    shown = "inf (identical)" if value is None else f"{value:.3f} dB"
    print(f"PSNR {shown} (r={peak:g}), MSE {document['mse']:.6g}, max abs error "
          f"{document['max_abs_error']:g}")


def data_demo(arguments: argparse.Namespace) -> None:
    from medlossy.data.demo import prepare_demo

    datasets = prepare_demo(Path(arguments.out), cache=arguments.cache,
                            show_progress=not arguments.quiet)
    for dataset in datasets:
        print(dataset)


def data_brain(arguments: argparse.Namespace) -> None:
    from medlossy.data.brain import prepare_brain_mr

    print(prepare_brain_mr(Path(arguments.out), cache=arguments.cache,
                           labels=arguments.labels))


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MedlossyError(None, f"--ratios must be numbers separated by commas, got {text!r}")\
            from None
    if not ratios or any(r < 1 for r in ratios):
        raise MedlossyError(None, f"--ratios must be >= 1 (1 = lossless), got {text!r}")
    return ratios


def study(arguments: argparse.Namespace) -> None:
    from dataclasses import replace

    from medlossy.experiments.config import EXPERIMENTS, load_config, validate
    from medlossy.experiments.demo import demo_config
    from medlossy.experiments.study import run_study

    out = Path(arguments.out)
    if arguments.demo == bool(arguments.config):
        raise MedlossyError(None, "give either a study config file or --demo")
    planning = arguments.dry_run or arguments.plan
    if not planning:  # before the demo data lands in it
        check_own_folder(out, STUDY_LAYOUT, "a medlossy study folder")
    # A dry run or plan reads no data beyond image headers: the datasets may not be there.
    check_files = not planning
    if arguments.demo:
        config, notes = demo_config(out, arguments.cache, not arguments.quiet)
    else:
        config, notes = load_config(arguments.config, check_files=check_files), ""
    if arguments.only:
        only = tuple(name.strip() for name in arguments.only.split(",") if name.strip())
        unknown = sorted(set(only) - set(EXPERIMENTS))
        if unknown:
            raise MedlossyError(None, f"--only: unknown experiment(s) {unknown}; known: "
                                      f"{', '.join(EXPERIMENTS)}")
        config = validate(replace(config, experiments=only), "--only",
                          check_files=check_files)
    if arguments.plan:
        from medlossy.experiments.plan import format_plan, plan_power

        print(format_plan(plan_power(config, effect=arguments.effect,
                                     model_sd=arguments.model_sd,
                                     case_sd=arguments.case_sd), config), end="")
        return
    if arguments.dry_run:
        from medlossy.experiments.dryrun import dry_run, format_dry_run

        print(format_dry_run(*dry_run(config, out)), end="")
        return
    gpus = None
    if arguments.gpus:
        from medlossy.experiments.scaleout import parse_gpus

        gpus = parse_gpus(arguments.gpus)
    for path in run_study(config, out, workers=arguments.workers,
                          scheduler=arguments.scheduler, gpus=gpus,
                          show_progress=not arguments.quiet, notes=notes):
        print(path)


#: What ``medlossy study`` writes at the top of its folder (demo data, crops, sweeps, models,
#: results, report): one of them marks a folder as a study's.
STUDY_LAYOUT = ("data", "prepared", "sweeps", "models", "results.csv", "report.md")


def dataset_compress(arguments: argparse.Namespace) -> None:
    # before --out is staged: a refused source leaves nothing at any URL
    folder_only(arguments.source, "a sweep's source",
                "every image is read whole, and recorded by size, mtime and sha256 to "
                "resume: download it first")
    _refuse_store_format(arguments)
    ratios = _ratios(arguments.ratios)
    with local_folder(arguments.out) as out:  # a URL: written here, then uploaded
        _dataset_compress(arguments, out, ratios)


def _dataset_compress(arguments: argparse.Namespace, out: Path, ratios: list[float]) -> None:
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.datasets.preparation import crop_dataset
    from medlossy.datasets.registration import check_registration, register_datasets
    from medlossy.datasets.sweep import check_sweep_folder, plan_sweep, run_sweep
    from medlossy.datasets.sweep_report import write_sweep_report
    from medlossy.tables import markdown_table

    check_sweep_folder(out, Path(arguments.source))  # before anything is prepared in it
    dataset = _dicom_root_dataset(arguments, out) or open_raw_dataset(
        arguments.source, modality=arguments.modality)
    if arguments.crop_to_label:
        values = [int(v) for v in arguments.crop_to_label.split(",") if v.strip()]
        dataset = crop_dataset(dataset, values, arguments.margin, out / "prepared")
    registry = Path(arguments.nnunet_raw) if arguments.nnunet_raw else None
    plan = plan_sweep(dataset, out, ratios, base_id=arguments.base_id,
                      skip_bad=arguments.skip_bad, origin=Path(arguments.source),
                      codec=arguments.codec, tile=arguments.tile, layout=arguments.layout,
                      registry=registry, zarr_format=arguments.zarr_version,
                      shard_slices=arguments.shard_slices)
    folders = [plan.dataset_folder(ratio) for ratio in plan.ratios]
    if registry is not None:
        check_registration(registry, folders)  # before any work: an id taken there
    for channel, peak in plan.ranges.items():
        modality = plan.dataset.channel_modality(channel)
        _say(arguments, f"channel {channel}: " + describe_peak(
            modality, plan.dataset.modality_how, peak,
            peak_rule(modality, None, "max - min over the dataset")))
    for problem in plan.bad.values():
        _say(arguments, f"skipped: {problem}")
    run_sweep(plan, workers=arguments.workers, scheduler=arguments.scheduler,
              skip_bad=arguments.skip_bad, layered=not arguments.per_ratio_search,
              show_progress=not arguments.quiet)
    summary, sweep = write_sweep_report(out)
    print(markdown_table(summary))  # the result: --quiet silences progress and notes only
    for problem in sweep["bad_cases"].values():
        print(f"bad case: {problem}")
    if registry is not None:
        kept = {plan.dataset_folder(ratio).name for ratio in sweep["ratios"]}
        for link in register_datasets(registry, [f for f in folders if f.name in kept]):
            _say(arguments, f"registered: {link}")


def _dicom_root_dataset(arguments: argparse.Namespace, out: Path):
    from medlossy.datasets.dicom_root import is_dicom_root, prepare_dicom_dataset
    from medlossy.jsonfile import read_json

    if arguments.labels is None:
        if is_dicom_root(Path(arguments.source)):
            raise MedlossyError(arguments.source, "looks like a folder of DICOM studies: pass "
                                                  "--labels seg or --labels rtstruct")
        return None
    label_map = None
    if arguments.label_map:
        label_map = read_json(Path(arguments.label_map), "no such label map file")
    dataset = prepare_dicom_dataset(arguments.source, out / "prepared", labels=arguments.labels,
                                    label_map=label_map, modality=arguments.modality)
    for name, folder in dataset.metadata.get("case_folders", {}).items():
        _say(arguments, f"note: study folder {folder!r} is case '{name}' (a file name holds "
                        "only letters, digits, '.', '_' and '-'; see case_folders in "
                        "dataset.json)")
    return dataset


#: Why the dataset commands read a sweep from a folder only.
_SWEEP_FOLDER_WHY = "it is listed, its decoded images and label copies written or checked"


def dataset_report(arguments: argparse.Namespace) -> None:
    from medlossy.datasets.sweep_report import write_sweep_report
    from medlossy.tables import markdown_table

    summary, sweep = write_sweep_report(folder_only(arguments.sweep, "a sweep",
                                                    _SWEEP_FOLDER_WHY))
    if arguments.json:
        _print_json({"sweep": arguments.sweep, "ratios": summary.to_dict("records"),
                     "bad_cases": sweep["bad_cases"]})
        return
    print(markdown_table(summary))
    for problem in sweep["bad_cases"].values():
        print(f"bad case: {problem}")


def dataset_verify(arguments: argparse.Namespace) -> None:
    from medlossy.datasets.sweep_report import verify_sweep

    problems = verify_sweep(folder_only(arguments.sweep, "a sweep", _SWEEP_FOLDER_WHY))
    document = {"sweep": arguments.sweep, "ok": not problems, "problems": problems}
    if problems:
        for problem in problems[1:]:
            print(problem, file=sys.stderr)
        raise _failed(arguments, document, f"{len(problems)} problem(s); first: {problems[0]}")
    _result(arguments, document,
            f"{arguments.sweep}: every store, decoded image and label matches its checksum")


def dataset_datalist(arguments: argparse.Namespace) -> None:
    from medlossy.train.datalist import write_datalists

    sweep = folder_only(arguments.sweep, "a sweep", _SWEEP_FOLDER_WHY)
    written = write_datalists(sweep, arguments.out, folds=arguments.folds, fold=arguments.fold)
    _result(arguments, {"sweep": arguments.sweep, "datalists": [str(p) for p in written]},
            "\n".join(str(path) for path in written))


def _numbers(text: str, option: str, kind: type, count: int = 3) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise MedlossyError(None, f"{option} must be numbers separated by commas, got "
                                  f"{text!r}") from None
    if len(values) == 1:
        values *= count
    if len(values) != count:
        raise MedlossyError(None, f"{option} needs 1 or {count} values, got {text!r}")
    return values


def data_phantom(arguments: argparse.Namespace) -> None:
    from medlossy.data.phantom import PhantomConfig, write_phantom_dataset

    config = PhantomConfig(shape=_numbers(arguments.shape, "--shape", int),
                           spacing=_numbers(arguments.spacing, "--spacing", float),
                           seed=arguments.seed, phase=arguments.phase)
    folder = write_phantom_dataset(arguments.out, arguments.cases, config,
                                   dataset_id=arguments.dataset_id,
                                   show_progress=not arguments.quiet)
    _say(arguments, f"SYNTHETIC phantom cohort: {arguments.cases} cases, seed {arguments.seed}")
    print(folder)


def _train_options(arguments: argparse.Namespace) -> dict:
    """The backend options given on the command line (the backend rejects foreign ones)."""
    options = {"device": arguments.device, "preset": arguments.preset,
               "batch_size": arguments.batch_size,
               "patch_size": _numbers(arguments.patch_size, "--patch-size", int)
               if arguments.patch_size else None,
               "augment": False if arguments.no_augment else None,
               "configuration": arguments.configuration, "plans": arguments.plans,
               "validation_iterations": arguments.validation_iterations,
               "preprocessed": arguments.preprocessed,
               "preprocessed_codec": arguments.preprocessed_codec,
               "preprocessed_tile": arguments.preprocessed_tile}
    return {key: value for key, value in options.items() if value is not None}


def train(arguments: argparse.Namespace) -> None:
    from medlossy.backends import TrainRequest, get_backend
    from medlossy.datasets.sweep import resolve_dataset_folder

    dataset = resolve_dataset_folder(arguments.dataset)
    backend = get_backend(arguments.backend)
    reference = resolve_dataset_folder(arguments.reference) if arguments.reference else None
    if arguments.mixed_weights and not arguments.mixed:
        raise MedlossyError(None, "--mixed-weights needs --mixed (the other ratios' datasets)")
    request = TrainRequest(fold=arguments.fold, folds=arguments.folds, seed=arguments.seed,
                           epochs=arguments.epochs, iterations_per_epoch=arguments.iterations,
                           options=_train_options(arguments), reference_dataset=reference,
                           mixed_datasets=tuple(Path(resolve_dataset_folder(folder))
                                                for folder in arguments.mixed),
                           mixed_weights=_numbers(arguments.mixed_weights, "--mixed-weights",
                                                  float, 1 + len(arguments.mixed))
                           if arguments.mixed_weights else (),
                           start_from=Path(arguments.start_from) if arguments.start_from
                           else None)
    backend.recipe(request)  # every option checked before any work
    if arguments.decode_cache is not None \
            and request.options.get("preprocessed", "blosc2") == "blosc2":
        raise MedlossyError(None, "--decode-cache keeps decoded slices of preprocessed "
                                  "stores: it needs --backend nnunet --preprocessed "
                                  "lossless|xR")
    _set_decode_cache(arguments.decode_cache)  # nnU-Net's workers inherit it
    folder = backend.train(Path(dataset), Path(arguments.out), request,
                           show_progress=not arguments.quiet)
    info = backend.describe(folder)
    speed = f" ({info.epochs * info.iterations_per_epoch / info.seconds:.2f} it/s)" \
        if info.seconds else ""
    print(f"{folder}: {backend.name} backend, fold {info.fold} ({len(info.train_cases)} "
          f"training, {len(info.test_cases)} test cases), {info.epochs} epochs x "
          f"{info.iterations_per_epoch} iterations on {info.device}{speed}")


def predict(arguments: argparse.Namespace) -> None:
    from medlossy.backends import backend_of
    from medlossy.datasets.sweep import resolve_dataset_folder

    dataset = resolve_dataset_folder(arguments.dataset)
    backend = backend_of(Path(arguments.model))
    out = backend.predict(Path(arguments.model), Path(dataset), Path(arguments.out),
                          cases=arguments.cases, device=arguments.device,
                          show_progress=not arguments.quiet)
    print(f"{out}: {backend.name} predictions")


def _patch_size(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(part) for part in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise MedlossyError(None, f"--patch must be three positive integers z,y,x, got {text!r}")
    return size


def _set_decode_cache(megabytes: float | None) -> None:
    """Size the loader's decode cache (``--decode-cache``) where given, else keep the
    environment's; either way a bad ``MEDLOSSY_DECODE_CACHE_MB`` is named here, before any
    work, not by a loader worker after preprocessing."""
    from medlossy.loading import set_decode_cache
    from medlossy.loading.cache import budget_from_environment

    if megabytes is not None:
        set_decode_cache(megabytes)
    budget_from_environment()


def bench_loader(arguments: argparse.Namespace) -> None:
    from medlossy.loading import StorePatchDataset
    from medlossy.loading.supply import measure_supply

    patch = _patch_size(arguments.patch)
    if arguments.workers < 0 or arguments.threads < 1 or arguments.level < 0:
        raise MedlossyError(None, "--workers must be >= 0, --threads >= 1, --level >= 0")
    _set_decode_cache(arguments.decode_cache)  # the workers inherit it
    dataset = StorePatchDataset(arguments.store, patch, arguments.labels, samples=10**9,
                                level=arguments.level, threads=arguments.threads)
    result = measure_supply(dataset, workers=arguments.workers, seconds=arguments.seconds)
    if arguments.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['codec']} x{result['ratio']}, patch {'x'.join(map(str, patch))} at level "
          f"{result['level']}, {result['workers']} worker(s): {result['mvox_per_s']} Mvox/s "
          f"({result['patches']} patches in {result['seconds']} s; load "
          f"{result['load_average'][0]})")


def list_codecs(arguments: argparse.Namespace) -> None:
    from medlossy.codecs.catalog import catalog

    entries = catalog()
    if arguments.json:
        _print_json(entries)
        return
    rows = [("codec", "chunk", "modes", "runs on", "library", "installed")]
    rows += [(e["name"], e["chunk"], " ".join(e["modes"]), e["hardware"], e["library"],
              "yes" if e["installed"] else f"no: needs {e['extra']}") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1])


def _lossy_ratios(text: str) -> list[float]:
    ratios = _ratios(text)
    if min(ratios) <= 1:
        raise MedlossyError(None, f"--ratios must be greater than 1 here (lossy), got {text!r}")
    return ratios


def bench_codecs(arguments: argparse.Namespace) -> None:
    import os

    from medlossy.codec_bench import bench_codecs as run
    from medlossy.codec_bench import plot, rd_table, speed_table
    from medlossy.codecs import CodecError, get_codec
    from medlossy.tables import markdown_table

    ratios = _lossy_ratios(arguments.ratios)
    names = None if arguments.codecs is None else [
        n.strip() for n in arguments.codecs.split(",") if n.strip()]
    try:
        for name in names or []:
            get_codec(name)
    except CodecError as error:
        raise MedlossyError(None, str(error)) from None
    if arguments.workers < 1:
        raise MedlossyError(None, "--workers must be >= 1")
    modality = "OTHER" if arguments.modality == "auto" else arguments.modality
    volume = read_volume(arguments.volume, modality)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)

    def progress(row: dict) -> None:
        if "refused" in row:
            _say(arguments, f"{row['codec']} x{row['ratio_target']:g}: {row['refused']}")
            return
        _say(arguments, f"{row['codec']} x{row['ratio_target']:g}: x{row['ratio']:.3f}, "
                        f"{row['psnr_db']} dB, encode {row['encode_pass_mvox_s']} Mvox/s per "
                        f"pass, decode {row['decode_mvox_s']} Mvox/s")

    load = os.getloadavg()[0]
    results = run(volume, ratios, names, workers=arguments.workers, source=arguments.volume,
                  progress=progress)
    results.to_csv(out / "codecs.csv", index=False)
    name = Path(arguments.volume).name
    title = (f"{name} {'x'.join(map(str, volume.shape))}, {arguments.workers} worker(s), "
             f"load {load:.2f} at start")
    text = (f"# Codecs on {title}\n\n## PSNR (dB) at each target ratio\n\n"
            f"{markdown_table(rd_table(results))}\n\n## Speed (median over the ratios)\n\n"
            f"{markdown_table(speed_table(results))}\n")
    (out / "codecs.md").write_text(text)
    plot(results, out / "codecs.png", title)
    print(text)
