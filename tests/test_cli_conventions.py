"""What users of Unix tools expect of a command line: results on stdout (one JSON document with
--json), notes and progress on stderr and progress bars only on a terminal, exit 0 / 1 (a
check failed) / 2 (bad input) / 130 / 143, help for every argument with its default, and
medlossy's own DICOM outputs readable by ``info`` and ``verify``."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

import medlossy
from medlossy.cli.main import build_parser

#: Where the medlossy under test lives, for its subprocesses.
SOURCE = Path(medlossy.__file__).parent.parent


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SOURCE), os.environ.get("PYTHONPATH", "")]), **extra}


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    """A small CT-like int16 volume, 64 x 48 x 8 (rows != columns)."""
    rng = np.random.default_rng(5)
    _, y, x = np.mgrid[0:8, 0:64, 0:48]
    body = ((y - 32) ** 2 + (x - 24) ** 2) < 20**2
    array = np.where(body, 40, -1000) + rng.normal(0, 20, body.shape)
    path = tmp_path_factory.mktemp("conventions") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(array, 0, -1).astype(np.int16),
                             np.diag([0.8, 0.8, 3, 1])), path)
    return path


@pytest.fixture(scope="module")
def store(ct_file, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "ct.zarr"
    run = subprocess.run([sys.executable, "-m", "medlossy.cli.main", "compress", str(ct_file),
                          str(path), "--ratio", "8", "--workers", "1", "--quiet"],
                         env=_environment(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return path


def _json(cli, *arguments) -> dict:
    code, out, _ = cli(*arguments, "--json")
    assert code == 0
    return json.loads(out)  # stdout holds the document and nothing else


def test_compress_json_is_the_only_thing_on_stdout(cli, ct_file, tmp_path):
    document = _json(cli, "compress", ct_file, tmp_path / "s.zarr", "--ratio", "8",
                     "--workers", "1")
    assert document["output"] == str(tmp_path / "s.zarr") and document["format"] == "store"
    assert document["ratio"] == pytest.approx(8, rel=0.01)
    assert document["psnr_db"] > 20 and document["target_reached"] is True
    assert document["stored_bytes"] > 0 and document["codec"] == "jpeg2k"


def test_compress_lossless_json_is_strict_json(cli, ct_file, tmp_path):
    # lossless PSNR is infinite: null in JSON, not the non-standard "Infinity"
    code, out, _ = cli("compress", ct_file, tmp_path / "s.zarr", "--lossless", "--workers",
                       "1", "--json")
    assert code == 0 and "Infinity" not in out
    assert json.loads(out)["psnr_db"] is None


def test_decompress_verify_codecs_json(cli, store, tmp_path):
    document = _json(cli, "decompress", store, tmp_path / "back.nii.gz", "--workers", "1")
    assert document["shape"] == [64, 48, 8] and document["dtype"] == "int16"
    document = _json(cli, "verify", store)
    assert document["ok"] is True and document["slices"] == 8 and document["bad"] == []
    entries = _json(cli, "codecs")
    assert "jpeg2k" in [entry["name"] for entry in entries]


def test_verify_json_of_a_damaged_store_and_exit_1(cli, store, tmp_path):
    copy = tmp_path / "copy.zarr"
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    chunk = copy / "0" / "3.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-4] + b"\0\0\0\0")
    code, out, err = cli("verify", copy, "--json")
    assert code == 1  # a check that failed, not bad input
    assert json.loads(out)["ok"] is False and json.loads(out)["bad"] == [3]
    assert err.startswith("medlossy: error: ") and err.count("\n") == 1


def test_dataset_report_and_verify_json(cli, monkeypatch, tmp_path):
    import medlossy.datasets.sweep_report as sweep_report

    summary = pd.DataFrame({"ratio_target": [1.0, 10.0], "psnr_mean_db": [np.inf, 41.5]})
    monkeypatch.setattr(sweep_report, "write_sweep_report",
                        lambda out: (summary, {"bad_cases": {"p1": "p1: damaged"}}))
    document = _json(cli, "dataset", "report", tmp_path)
    assert document["ratios"][0]["psnr_mean_db"] is None  # lossless: no PSNR
    assert document["ratios"][1]["psnr_mean_db"] == 41.5
    assert document["bad_cases"] == {"p1": "p1: damaged"}
    monkeypatch.setattr(sweep_report, "verify_sweep", lambda out: ["a: differs", "b: gone"])
    code, out, err = cli("dataset", "verify", tmp_path, "--json")
    assert code == 1
    assert json.loads(out) == {"sweep": str(tmp_path), "ok": False,
                               "problems": ["a: differs", "b: gone"]}
    assert "2 problem(s); first: a: differs" in err


def test_progress_bars_stay_out_of_a_log_file(ct_file, tmp_path):
    # Before: a compress logged to a file held dozens of carriage-return bar redraws.
    log = tmp_path / "compress.log"
    with log.open("w") as stderr:
        run = subprocess.run([sys.executable, "-m", "medlossy.cli.main", "compress",
                              str(ct_file), str(tmp_path / "s.zarr"), "--psnr", "45",
                              "--workers", "1"], env=_environment(), stderr=stderr,
                             stdout=subprocess.PIPE, text=True, timeout=120)
    assert run.returncode == 0
    assert b"\r" not in log.read_bytes()  # bytes: read as text, "\\r" would become "\\n"
    assert run.stdout.startswith(f"{tmp_path / 's.zarr'}: x")


def _interrupted(signum: int) -> subprocess.CompletedProcess:
    """``medlossy codecs`` made to hang, sent ``signum`` once it runs."""
    script = ("import sys, time\n"
              "from medlossy.cli import commands, main\n"
              "def hang(arguments):\n"
              "    print('running', flush=True)\n"
              "    time.sleep(60)\n"
              "commands.list_codecs = hang\n"
              "sys.exit(main.main(['codecs']))\n")
    process = subprocess.Popen([sys.executable, "-c", script], env=_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "running\n"
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


#: A shell's background job (`cmd &` without job control) starts with SIGINT ignored, and its
#: children inherit that: Ctrl-C cannot reach them, so there is nothing to test.
_SIGINT_IGNORED = pytest.mark.skipif(signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                                     reason="SIGINT is ignored here (a background job)")


@pytest.mark.parametrize(("signum", "code"), [
    (signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=_SIGINT_IGNORED)])
def test_signals_exit_128_plus_their_number(signum, code):
    run = _interrupted(signum)
    assert run.returncode == code, run.stderr
    assert run.stderr == "medlossy: interrupted; no partial output was left\n"


#: Run the console script's entry with importing the CLI interrupted by ``signal`` (the
#: import sends it to this process), as Ctrl-C or SIGTERM in the first seconds do (found by
#: testers: an 18-51 line KeyboardInterrupt traceback; a silent death by SIGTERM).
_SIGNAL_WHILE_IMPORTING = """
import os, signal, sys
class _Signal:
    def find_spec(self, name, path=None, target=None):
        if name == "medlossy.cli.main":
            os.kill(os.getpid(), signal.{name})
sys.meta_path.insert(0, _Signal())
from medlossy.cli.entry import main
sys.exit(main())
"""


@pytest.mark.parametrize(("name", "code"), [
    pytest.param("SIGINT", 130, marks=_SIGINT_IGNORED), ("SIGTERM", 143)])
def test_a_signal_while_the_cli_is_importing_is_one_line(name, code):
    run = subprocess.run([sys.executable, "-c", _SIGNAL_WHILE_IMPORTING.format(name=name)],
                         capture_output=True, text=True, env=_environment(), timeout=120,
                         check=False)
    assert run.returncode == code, run.stderr
    assert run.stderr == "medlossy: interrupted; no partial output was left\n"


def test_python_dash_m_medlossy_is_the_command():
    run = subprocess.run([sys.executable, "-m", "medlossy", "--version"], capture_output=True,
                         text=True, env=_environment(), timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.startswith("medlossy "), run.stderr


def test_the_console_script_runs_the_entry():
    import tomllib

    scripts = tomllib.loads((SOURCE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["medlossy"] == "medlossy.cli.entry:main"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _parsers(child)
    return found


def _actions():
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                       argparse._SubParsersAction)):
                yield parser, action


def test_every_argument_has_help():
    missing = [f"{parser.prog} {action.option_strings or action.dest}"
               for parser, action in _actions() if not action.help]
    assert missing == []


def test_help_shows_defaults_in_one_form(capsys):
    for parser, action in _actions():
        default = action.default
        if action.option_strings and default is not None and default is not False \
                and not (isinstance(default, float) and np.isnan(default)):
            shown = parser._get_formatter()._expand_help(action)
            assert "default: " in shown, f"{parser.prog} {action.option_strings}: {shown}"
            assert not re.search(r"\(default [^:]", shown), shown  # one form: "(default: X)"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reader", "serve", "--help"])
    assert "(default: 8000)" in capsys.readouterr().out  # --port had no help at all


def test_a_volume_file_name_for_a_store_is_refused(cli, ct_file, tmp_path):
    # Before: the store was written as a folder named out.nii.gz.
    code, out, err = cli("compress", ct_file, tmp_path / "out.nii.gz", "--ratio", "8",
                         "--workers", "1")
    assert code == 2 and out == ""
    assert err == (f"medlossy: error: {tmp_path / 'out.nii.gz'}: is named like a volume "
                   "file, but compress writes a store (e.g. ct_r20.zarr); `medlossy "
                   "decompress` writes .nii.gz and .nrrd files\n")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def dicom_output(ct_file, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "ct_dicom"
    run = subprocess.run([sys.executable, "-m", "medlossy.cli.main", "compress", str(ct_file),
                          str(folder), "--ratio", "8", "--format", "dicom", "--modality", "CT",
                          "--workers", "1", "--quiet"], env=_environment(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return folder


def test_info_reads_a_medlossy_dicom_series(cli, dicom_output):
    # Before: "info" and "verify" took stores only ("not a medlossy store", exit 2).
    document = _json(cli, "info", dicom_output)
    assert document["files"] == 8 and document["frames"] == 8
    assert document["sop_class"] == "CT Image Storage"
    assert document["ratio"] == pytest.approx(8, rel=0.01)
    assert document["recorded_ratio"] == pytest.approx(document["ratio"], rel=1e-4)
    code, out, _ = cli("info", dicom_output)
    assert code == 0 and "JPEG 2000" in out and "8 of 48 rows x 64 columns" in out


def test_verify_decodes_a_dicom_series_and_checks_its_ratio(cli, dicom_output, tmp_path):
    code, out, _ = cli("verify", dicom_output)
    assert code == 0 and "all 8 frames in 8 DICOM file(s) decode" in out
    edited = tmp_path / "edited"
    subprocess.run(["cp", "-r", str(dicom_output), str(edited)], check=True)
    for file in sorted(edited.iterdir()):  # every file consistently claims x20
        ds = pydicom.dcmread(file)
        ds.LossyImageCompressionRatio = "20"
        ds.save_as(file)
    code, out, err = cli("verify", edited)
    assert code == 1 and out == ""
    assert "records ratio x20, its frames hold x8" in err and err.count("\n") == 1


def test_verify_names_a_truncated_dicom_file(cli, dicom_output, tmp_path):
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(dicom_output), str(damaged)], check=True)
    file = damaged / "IM00003.dcm"
    file.write_bytes(file.read_bytes()[:-200])
    code, out, err = cli("verify", damaged, "--json")
    assert code == 1
    assert json.loads(out)["ok"] is False
    assert err.startswith(f"medlossy: error: {damaged}: 1 problem(s): IM00003.dcm: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("no_color", "terminal", "expected"), [
    (None, True, True), ("1", True, False), ("", True, True), (None, False, False)])
def test_colour_only_on_a_terminal_without_no_color(monkeypatch, no_color, terminal, expected):
    from medlossy.terminal import colours

    class Stream:
        def isatty(self) -> bool:
            return terminal

    monkeypatch.delenv("NO_COLOR", raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    assert colours(Stream()) is expected


def test_an_unreached_target_is_named_as_the_user_wrote_it(tmp_path):
    """The note printed a Python dict ({'mode': 'ratio', 'value': 10.0, ...}; a tester)."""
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((64, 64, 8), 7, np.int16), np.eye(4)), flat)
    run = subprocess.run([sys.executable, "-m", "medlossy", "compress", str(flat),
                          str(tmp_path / "flat.zarr"), "--ratio", "10", "--workers", "1"],
                         capture_output=True, text=True, env=_environment(), timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "note: target x10 not reached: lossless already fits the budget" in run.stderr
    assert "{" not in run.stderr


def test_info_on_a_volume_file_says_it_is_a_file(tmp_path):
    """Was 'no such store (expected a directory)' for a file that exists (a tester)."""
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), volume)
    run = subprocess.run([sys.executable, "-m", "medlossy", "info", "--json", str(volume)],
                         capture_output=True, text=True, env=_environment(), timeout=120,
                         check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (f"medlossy: error: {volume}: is a file, not a medlossy store (a "
                          "store is a folder written by `medlossy compress`)\n")
