"""Outputs appear whole or not at all, also when a write fails half way."""

from __future__ import annotations

import pytest
from conftest import leftovers

import medlossy.compression
from medlossy.atomic import atomic_output
from medlossy.compression import Target, compress_volume
from medlossy.errors import MedlossyError


def test_success_renames_a_file_into_place(tmp_path):
    with atomic_output(tmp_path / "out.nii.gz") as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.endswith(".nii.gz")  # libraries pick formats by suffix
        temporary.write_text("done")
    assert (tmp_path / "out.nii.gz").read_text() == "done"
    assert leftovers(tmp_path) == []


def test_success_replaces_an_existing_directory(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "old").write_text("old")
    with atomic_output(tmp_path / "store") as temporary:
        temporary.mkdir()
        (temporary / "new").write_text("new")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["new"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("meanwhile", ["file", "folder"])
def test_without_replace_what_appeared_meanwhile_is_kept(tmp_path, kind, meanwhile):
    final = tmp_path / "out"
    with pytest.raises(MedlossyError, match="appeared while this run was writing it"), \
            atomic_output(final, replace=False) as temporary:
        if kind == "folder":
            temporary.mkdir()
            (temporary / "ours").write_text("ours")
        else:
            temporary.write_text("ours")
        if meanwhile == "folder":  # another run's output, committed first
            final.mkdir()
            (final / "theirs").write_text("theirs")
        else:
            final.write_text("theirs")
    theirs = final / "theirs" if meanwhile == "folder" else final
    assert theirs.read_text() == "theirs"
    assert leftovers(tmp_path) == []


def test_without_replace_a_new_output_is_committed(tmp_path):
    with atomic_output(tmp_path / "out.txt", replace=False) as temporary:
        temporary.write_text("done")
    assert (tmp_path / "out.txt").read_text() == "done"
    assert leftovers(tmp_path) == []


def test_failure_leaves_the_old_output_and_no_temporary(tmp_path):
    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "out.txt") as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert (tmp_path / "out.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_compress_failing_while_writing_leaves_nothing(monkeypatch, ct_b_crop, tmp_path, error):
    real_write = medlossy.compression.write_store

    def write_then_fail(directory, *arguments):
        real_write(directory, *arguments)  # the store is complete under its temporary name
        raise error

    monkeypatch.setattr(medlossy.compression, "write_store", write_then_fail)
    with pytest.raises(type(error)):
        compress_volume(ct_b_crop, tmp_path / "s.zarr", Target("ratio", 10.0), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_cli_interrupt_says_no_partial_output_was_left(monkeypatch, cli, ct_b_crop_file,
                                                       tmp_path):
    def interrupted(*arguments, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(medlossy.compression, "write_store", interrupted)
    code, _, err = cli("compress", ct_b_crop_file, tmp_path / "s.zarr", "--ratio", "10",
                       "--workers", "1", "--quiet")
    assert code == 130
    assert "no partial output" in err
    assert list(tmp_path.iterdir()) == []


def test_concurrent_replacing_writers_leave_one_whole_output_and_no_leftovers(tmp_path):
    # Runs with --force writing one output at once: each must end with a whole output (one
    # writer's), never an error or a retired copy left behind.
    import threading

    final = tmp_path / "store"
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for round_ in range(30):
                with atomic_output(final) as temporary:
                    temporary.mkdir()
                    for part in range(3):
                        (temporary / f"part{part}").write_text(f"{name} {round_}")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(f"w{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    contents = {(final / f"part{part}").read_text() for part in range(3)}
    assert len(contents) == 1  # one writer's whole output
    assert sorted(p.name for p in final.iterdir()) == ["part0", "part1", "part2"]
    assert leftovers(tmp_path) == []


def test_a_replacing_commit_that_fails_puts_the_old_folder_back(tmp_path, monkeypatch):
    from medlossy import atomic

    final = tmp_path / "store"
    final.mkdir()
    (final / "old").write_text("old")

    def no_space(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(OSError, match="No space"), atomic_output(final) as temporary:
        temporary.mkdir()
        (temporary / "new").write_text("new")
    monkeypatch.undo()
    assert (final / "old").read_text() == "old"
    assert leftovers(tmp_path) == []
