"""JPEG 2000 encode and decode speed in Mvox/s (1 Mvox = 10^6 voxels).

(a) medlossy's codec (pylibjpeg-openjpeg encode, imagecodecs decode), one slice at a time in
    this process, on every axial slice of CT B (233x167) and CT C (512x512).
(b) compress_volume / read_store on the whole of CT B, workers=1 and 2: one fixed-setting
    encode pass through medlossy's process pool, the encode rate compress_volume reports
    (voxels x passes / encode seconds), end-to-end wall time, and read_store.
(c) Debian's OpenJPEG command-line tools (libopenjp2-tools) on the same slices as raw int16
    files (-F W,H,1,16,s), one thread: a batch over all slices (-ImgDir) minus a batch of one
    slice removes the process start; one process per slice is reported too. A signed 16-bit
    PGX slice is also encoded once, to record the bit depth opj_compress declares for it.
Every time is the best of 3 runs.

    .venv/bin/python bench/throughput.py [--skip-cli]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import _common
import imagecodecs
import numpy as np

from medlossy.codecs import Setting, get_codec
from medlossy.codecs.pool import slice_encoder
from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store

SETTINGS = (("x20 (9/7)", Setting("ratio", 20.0)), ("lossless (5/3)", Setting("lossless")))
CLI_MODES = (("x20 (9/7): -I -r 20", ["-I", "-r", "20"]),
             ("x20 (5/3): -r 20", ["-r", "20"]),
             ("lossless (5/3)", []))


def mvox(voxels: int, seconds: float) -> float:
    return voxels / seconds / 1e6


def wavelet(codestream: bytes) -> str:
    """The transform the COD marker segment declares (ISO 15444-1 A.6.1)."""
    position = codestream.find(b"\xff\x52")
    if position < 0:
        return "?"
    return {0: "9/7", 1: "5/3"}.get(codestream[position + 13], "?")


def slice_psnr(slices: np.ndarray, decoded: list[np.ndarray]) -> float:
    return _common.psnr(slices, np.stack(decoded))


def codec_per_slice(name: str, slices: np.ndarray) -> list[dict]:
    """(a): encode / decode every slice, one at a time, in this process."""
    codec = get_codec("jpeg2k")
    voxels = slices.size
    rows = []
    for label, setting in SETTINGS:
        busy = _common.wait_for_quiet()
        encode = _common.timed(lambda setting=setting: [codec.encode(s, setting) for s in slices])
        streams = encode.pop("result")
        decode = _common.timed(lambda streams=streams: [codec.decode(s) for s in streams])
        decoded = decode.pop("result")
        rows.append({
            "data": name, "slices": len(slices), "slice_shape": list(slices.shape[1:]),
            "setting": label, "wavelet": wavelet(streams[0]), "busy_cores_before": busy,
            "ratio": slices.size * 2 / sum(map(len, streams)),
            "psnr_db": slice_psnr(slices, decoded),
            "encode_seconds": encode, "decode_seconds": decode,
            "encode_mvox_s": mvox(voxels, encode["wall_best"]),
            "decode_mvox_s": mvox(voxels, decode["wall_best"]),
            "encode_mvox_cpu_s": mvox(voxels, encode["cpu_best"]),
            "decode_mvox_cpu_s": mvox(voxels, decode["cpu_best"]),
        })
        _common.progress(f"  (a) {name} {label}: encode {rows[-1]['encode_mvox_s']:.2f} "
                         f"({rows[-1]['encode_mvox_cpu_s']:.2f} per CPU s), decode "
                         f"{rows[-1]['decode_mvox_s']:.2f} ({rows[-1]['decode_mvox_cpu_s']:.2f}) "
                         f"Mvox/s (busy {busy})")
    return rows


def pipeline(volume, workers: int) -> dict:
    """(b): one encode pass through the pool, compress_volume end to end, read_store."""
    codec = get_codec("jpeg2k")
    slices = _common.slices_first(volume).astype(np.int16)
    voxels = slices.size
    busy = _common.wait_for_quiet()
    with slice_encoder(codec, slices.shape, "<i2", workers) as encoder:
        encoder.slices[:] = slices
        encoder.encode_all(Setting("ratio", 20.0))  # warm-up: starts the worker processes
        pass_best, pass_all, _ = _common.best_of(
            lambda: encoder.encode_all(Setting("ratio", 20.0)))
    store = _common.OUT / "throughput" / f"ct_b_w{workers}.zarr"
    store.parent.mkdir(parents=True, exist_ok=True)
    reports = []

    def compress() -> None:
        attributes = compress_volume(volume, store, Target("ratio", 20, "equal"),
                                     workers=workers, source="CT_B.nii.gz")
        reports.append(attributes["achieved"])

    wall_best, wall_all, _ = _common.best_of(
        compress, setup=lambda: shutil.rmtree(store, ignore_errors=True))
    best_report = min(reports, key=lambda r: r["encode_seconds"])
    read_best, read_all, _ = _common.best_of(lambda: read_store(store, workers=workers))
    row = {
        "workers": workers, "voxels": voxels, "busy_cores_before": busy,
        "pass_seconds_best": pass_best, "pass_seconds_all": pass_all,
        "pass_mvox_s": mvox(voxels, pass_best),
        "encode_passes": best_report["encode_passes"],
        "encode_seconds_best": best_report["encode_seconds"],
        "encode_seconds_all": [r["encode_seconds"] for r in reports],
        "compress_encode_mvox_s": mvox(voxels * best_report["encode_passes"],
                                       best_report["encode_seconds"]),
        "compress_wall_seconds_best": wall_best, "compress_wall_seconds_all": wall_all,
        "compress_wall_mvox_s": mvox(voxels, wall_best),
        "achieved_ratio": best_report["ratio"],
        "read_store_seconds_best": read_best, "read_store_seconds_all": read_all,
        "read_store_mvox_s": mvox(voxels, read_best),
    }
    _common.progress(f"  (b) workers={workers}: pass {row['pass_mvox_s']:.2f}, compress "
                     f"{row['compress_wall_seconds_best']:.2f} s, read_store "
                     f"{row['read_store_mvox_s']:.2f} Mvox/s")
    return row


def write_rawl(slices: np.ndarray, folder: Path) -> None:
    """One headerless little-endian int16 file per slice (opj_compress -F W,H,1,16,s)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index, image in enumerate(slices):
        (folder / f"s{index:04d}.rawl").write_bytes(image.astype("<i2").tobytes())


def declared_precision(codestream: bytes) -> tuple[int, bool]:
    """(bits, signed) of the first component, from the SIZ marker segment (ISO 15444-1 A.5.1)."""
    position = codestream.find(b"\xff\x51")
    ssiz = codestream[position + 40]
    return (ssiz & 0x7F) + 1, bool(ssiz & 0x80)


def pgx_check(slices: np.ndarray) -> dict:
    """What opj_compress makes of a signed 16-bit PGX slice ('PG ML - 16 W H'), lossless."""
    folder = _common.OUT / "opj" / "pgx_check"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    image = slices[int(np.argmax(slices.reshape(len(slices), -1).max(axis=1)))]
    rows, columns = image.shape
    (folder / "slice.pgx").write_bytes(f"PG ML - 16 {columns} {rows}\n".encode()
                                       + image.astype(">i2").tobytes())
    _run(["opj_compress", "-i", str(folder / "slice.pgx"), "-o", str(folder / "slice.j2k")])
    stream = (folder / "slice.j2k").read_bytes()
    decoded = imagecodecs.jpeg2k_decode(stream)
    bits, signed = declared_precision(stream)
    return {"declared_bits": bits, "declared_signed": signed,
            "slice_min": int(image.min()), "slice_max": int(image.max()),
            "decoded_max": int(decoded.max()),
            "lossless_max_abs_error": int(np.abs(decoded.astype(np.int32) - image).max())}


def _clean(folder: Path, suffixes: tuple[str, ...]) -> None:
    for path in folder.iterdir():
        if path.name.lower().endswith(suffixes):
            path.unlink()


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout[-500:]}"
                           f"{result.stderr[-500:]}")


def _timed_batch(command: list[str], folder: Path, outputs: tuple[str, ...]) -> dict:
    return _common.timed(lambda: _run(command), setup=lambda: _clean(folder, outputs))


def opj_cli(name: str, slices: np.ndarray) -> list[dict]:
    """(c): opj_compress / opj_decompress, single-threaded, batch and one process per slice."""
    root = _common.OUT / "opj" / name.replace(" ", "_")
    shutil.rmtree(root, ignore_errors=True)
    all_in, one_in = root / "raw_all", root / "raw_one"
    write_rawl(slices, all_in)
    write_rawl(slices[:1], one_in)
    count, slice_voxels = len(slices), slices[0].size
    raw_format = f"{slices.shape[2]},{slices.shape[1]},1,16,s"
    rows = []
    for label, options in CLI_MODES:
        busy = _common.wait_for_quiet()
        compress = ["opj_compress", "-OutFor", "J2K", "-threads", "1", "-F", raw_format,
                    *options, "-ImgDir"]
        batch_all = _timed_batch([*compress, str(all_in)], all_in, (".j2k",))
        batch_one = _timed_batch([*compress, str(one_in)], one_in, (".j2k",))
        coded_all, coded_one = root / "j2k_all", root / "j2k_one"
        for source, target in ((all_in, coded_all), (one_in, coded_one)):
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for path in sorted(source.glob("*.J2K")):
                path.rename(target / path.name)
        files = sorted(coded_all.glob("*.J2K"))
        per_process = [["opj_compress", "-threads", "1", "-F", raw_format, *options, "-i",
                        str(all_in / f"{path.stem}.rawl"), "-o", str(root / "single.j2k")]
                       for path in files]
        per_process_timing = _common.timed(lambda per_process=per_process:
                                           [_run(c) for c in per_process])
        decompress = ["opj_decompress", "-OutFor", "RAWL", "-threads", "1", "-quiet", "-ImgDir"]
        dec_all = _timed_batch([*decompress, str(coded_all)], coded_all, (".rawl",))
        dec_one = _timed_batch([*decompress, str(coded_one)], coded_one, (".rawl",))
        dec_process = [["opj_decompress", "-threads", "1", "-quiet", "-i", str(path), "-o",
                        str(root / "single.rawl")] for path in files]
        dec_process_timing = _common.timed(lambda dec_process=dec_process:
                                           [_run(c) for c in dec_process])
        streams = [path.read_bytes() for path in files]
        decoded = [imagecodecs.jpeg2k_decode(s) for s in streams]
        bits, signed = declared_precision(streams[0])
        row = {
            "data": name, "slices": count, "mode": label, "options": options,
            "busy_cores_before": busy,
            "wavelet": wavelet(streams[0]), "declared_bits": bits, "declared_signed": signed,
            "ratio": slices.size * 2 / sum(map(len, streams)),
            "psnr_db": slice_psnr(slices, decoded),
        }
        for step, every, one, process in (
                ("encode", batch_all, batch_one, per_process_timing),
                ("decode", dec_all, dec_one, dec_process_timing)):
            for timing in (every, one, process):
                timing.pop("result", None)
            row[f"{step}_batch_seconds"] = every
            row[f"{step}_one_file_batch_seconds"] = one
            row[f"{step}_process_per_slice_seconds"] = process
            for clock in ("wall", "cpu"):
                net = (every[f"{clock}_best"] - one[f"{clock}_best"]) / (count - 1)
                row[f"{step}_mvox_{clock}_net"] = slice_voxels / net / 1e6
                row[f"{step}_mvox_{clock}_batch"] = mvox(slices.size, every[f"{clock}_best"])
                row[f"{step}_mvox_{clock}_process_per_slice"] = mvox(
                    slices.size, process[f"{clock}_best"])
        rows.append(row)
        _common.progress(f"  (c) {name} {label}: encode {row['encode_mvox_wall_net']:.2f} "
                         f"({row['encode_mvox_cpu_net']:.2f} per CPU s), decode "
                         f"{row['decode_mvox_wall_net']:.2f} ({row['decode_mvox_cpu_net']:.2f}) "
                         f"Mvox/s net (busy {busy})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cli", action="store_true", help="skip the opj_* tools")
    arguments = parser.parse_args()
    info = _common.machine()
    cts = _common.demo_cts()
    data = {name: _common.slices_first(cts[name][1]).astype(np.int16)
            for name in ("CT B", "CT C")}
    started = time.perf_counter()
    codec_rows = [row for name, slices in data.items()
                  for row in codec_per_slice(name, slices)]
    pipeline_rows = [pipeline(cts["CT B"][1], workers) for workers in (1, 2)]
    cli_rows: list[dict] = []
    pgx: dict = {}
    if not arguments.skip_cli and shutil.which("opj_compress"):
        cli_rows = [row for name, slices in data.items() for row in opj_cli(name, slices)]
        pgx = pgx_check(data["CT B"])

    codec_md = _common.table(
        ["data", "setting", "wavelet", "ratio", "PSNR dB", "encode Mvox/s (per CPU s)",
         "decode Mvox/s (per CPU s)", "others' busy cores"],
        [[f"{r['data']} ({r['slices']} x {r['slice_shape'][0]}x{r['slice_shape'][1]})",
          r["setting"], r["wavelet"], f"x{r['ratio']:.2f}", f"{r['psnr_db']:.2f}",
          f"{r['encode_mvox_s']:.2f} ({r['encode_mvox_cpu_s']:.2f})",
          f"{r['decode_mvox_s']:.2f} ({r['decode_mvox_cpu_s']:.2f})",
          r["busy_cores_before"]] for r in codec_rows])
    pipeline_md = _common.table(
        ["workers", "one encode pass Mvox/s", "compress_volume passes",
         "compress_volume encode Mvox/s (vox x passes / encode s)",
         "compress_volume wall s", "end-to-end Mvox/s", "read_store s", "read_store Mvox/s",
         "others' busy cores"],
        [[r["workers"], f"{r['pass_mvox_s']:.2f}", r["encode_passes"],
          f"{r['compress_encode_mvox_s']:.2f}", f"{r['compress_wall_seconds_best']:.2f}",
          f"{r['compress_wall_mvox_s']:.2f}", f"{r['read_store_seconds_best']:.3f}",
          f"{r['read_store_mvox_s']:.2f}", r["busy_cores_before"]] for r in pipeline_rows])
    sections = [
        "## Throughput (JPEG 2000, OpenJPEG)",
        "Mvox/s = 10^6 voxels per second; best of 3 runs. The machine is shared: before each "
        "group of runs the script waits (up to 90 s) until other processes use under 0.25 "
        "cores, and records what they used ('others' busy cores', 2 = both cores taken). "
        "Where other work shares the cores, Mvox per CPU second (in brackets) is the better "
        "estimate of what an idle core does.",
        "### (a) medlossy's codec, one slice at a time, one process",
        "`Jpeg2kCodec.encode` (pylibjpeg-openjpeg, `Setting('ratio', 20)` or lossless, "
        "comment marker stripped) and `Jpeg2kCodec.decode` (imagecodecs) over every axial "
        "slice, in memory.",
        codec_md,
        "### (b) compress_volume / read_store on CT B (191 x 233x167, 7.43 Mvox)",
        "'one encode pass' = `SliceEncoder.encode_all(Setting('ratio', 20))` through "
        "medlossy's process pool, pool already started; `compress_volume(Target('ratio', 20, "
        "'equal'))` reports its passes and encode seconds (which include starting the pool "
        "and filling the slice buffer); wall = the whole call (search, error measurement, "
        "store writing).",
        pipeline_md,
    ]
    if cli_rows:
        def rates(r: dict, step: str, kind: str) -> str:
            return (f"{r[f'{step}_mvox_wall_{kind}']:.2f} "
                    f"({r[f'{step}_mvox_cpu_{kind}']:.2f})")

        cli_md = _common.table(
            ["data", "mode", "wavelet", "ratio", "PSNR dB", "encode net", "encode batch",
             "encode 1 process/slice", "decode net", "decode batch", "decode 1 process/slice",
             "others' busy cores"],
            [[f"{r['data']} ({r['slices']} slices)", r["mode"], r["wavelet"],
              f"x{r['ratio']:.2f}", f"{r['psnr_db']:.2f}", rates(r, "encode", "net"),
              rates(r, "encode", "batch"), rates(r, "encode", "process_per_slice"),
              rates(r, "decode", "net"), rates(r, "decode", "batch"),
              rates(r, "decode", "process_per_slice"), r["busy_cores_before"]]
             for r in cli_rows])
        sections += [
            f"### (c) Debian's OpenJPEG tools ({info['opj_tools_libopenjp2']}), same slices",
            "`opj_compress -ImgDir <dir> -OutFor J2K -threads 1 -F W,H,1,16,s [-I] [-r 20]` "
            "and `opj_decompress -ImgDir <j2k dir> -OutFor RAWL -threads 1 -quiet`, slices as "
            "headerless little-endian int16 (.rawl). Mvox/s of wall time (per CPU second of the "
            "tool's processes in brackets). 'net' = (batch of all slices - batch of "
            "one slice) / (slices - 1): no process start, but file reading/writing is "
            "included; 'batch' includes one process start; '1 process/slice' starts one "
            "process per slice. Ratio and PSNR are of the tool's codestreams (decoded with "
            "imagecodecs). The codestreams declare "
            + ", ".join(sorted({f"{r['declared_bits']}-bit "
                                f"{'signed' if r['declared_signed'] else 'unsigned'}"
                                for r in cli_rows})) + ".",
            cli_md,
            f"Not PGX: a signed 16-bit PGX slice of CT B ('PG ML - 16 W H', values "
            f"{pgx['slice_min']}..{pgx['slice_max']}) comes out of `opj_compress` (lossless) "
            f"declared {pgx['declared_bits']}-bit "
            f"{'signed' if pgx['declared_signed'] else 'unsigned'}: it decodes with maximum "
            f"{pgx['decoded_max']} and a maximum error of {pgx['lossless_max_abs_error']}, and "
            "`-r` ratios then count against that smaller depth.",
        ]
    sections.append(_common.machine_markdown(info))
    _common.save("throughput", {"machine": info, "codec": codec_rows, "pipeline": pipeline_rows,
                                "cli": cli_rows, "pgx_check": pgx,
                                "total_seconds": time.perf_counter() - started},
                 "\n\n".join(sections))


if __name__ == "__main__":
    main()
