"""codec = [...] in a study config: one sweep and one set of models per codec, compared at
equal ratio in the report."""

from __future__ import annotations

import pandas as pd
import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.experiments.config import load_config
from medlossy.experiments.study import run_study

pytestmark = pytest.mark.slow

CONFIG = """\
experiments = ["quality", "train"]
ratios = [1, 5]
train_ratios = [1, 5]
folds = 2
codec = ["jpeg2k", "sperr"]

[[datasets]]
path = "data/Dataset950_Phantom"
synthetic = true

[training]
preset = "lowres"
target_spacing = [6, 6, 6]
patch_size = [16, 16, 16]
filters = [4, 8, 16]
epochs = 1
iterations_per_epoch = 1
batch_size = 1
device = "cpu"
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_codecs")
    write_phantom_dataset(root / "data", 4, PhantomConfig(shape=(32, 32, 24),
                                                         spacing=(6.0, 6.0, 6.0)))
    (root / "study.toml").write_text(CONFIG)
    config = load_config(root / "study.toml")
    run_study(config, root / "out", workers=1)
    return config, root / "out"


def test_each_codec_has_its_own_sweep_with_its_codec(study):
    config, out = study
    assert config.codecs == ("jpeg2k", "sperr")
    for codec in config.codecs:
        manifest = pd.read_csv(out / "sweeps" / f"Dataset950_Phantom_{codec}" / "manifest.csv")
        lossy = manifest[manifest.ratio_target == 5]
        # (x5: a 32x32x24 phantom's metadata caps JPEG 2000 near x9, and a sweep refuses a
        # ratio out of reach)
        assert set(lossy.codec) == {codec} and lossy.target_reached.all()


def test_quality_and_dice_rows_exist_for_every_codec(study):
    _, out = study
    results = pd.read_csv(out / "results.csv")
    quality = results[(results.experiment == "quality") & (results.metric == "psnr_db")]
    assert set(quality.dataset) == {"Dataset950_Phantom_jpeg2k", "Dataset950_Phantom_sperr"}
    dice = results[(results.experiment == "train") & (results.metric == "dice")]
    assert set(dice.dataset) == {"Dataset950_Phantom_jpeg2k", "Dataset950_Phantom_sperr"}
    assert set(dice.ratio_train) == {1, 5}


def test_report_compares_codecs_at_equal_ratio(study):
    _, out = study
    report = (out / "report.md").read_text()
    assert "Codecs at equal ratio" in report
    section = report.split("Codecs at equal ratio", 1)[1]
    assert "| jpeg2k | 5 |" in section and "| sperr | 5 |" in section


def test_an_unknown_or_lossless_only_codec_is_refused(tmp_path):
    write_phantom_dataset(tmp_path / "data", 2, PhantomConfig(shape=(32, 32, 16),
                                                              spacing=(6.0, 6.0, 6.0)))
    for codec, problem in (('"webp"', "unknown codec 'webp'"),
                           ('["jpeg2k", "blosc"]', "codec 'blosc' has no ratio mode"),
                           ('["htj2k", "htj2k"]', "list of distinct names")):
        (tmp_path / "s.toml").write_text(CONFIG.replace('["jpeg2k", "sperr"]', codec)
                                         .replace('experiments = ["quality", "train"]',
                                                  'experiments = ["quality"]'))
        with pytest.raises(MedlossyError, match=problem):
            load_config(tmp_path / "s.toml")
