"""bfloat16 mixed precision: chosen per device, recorded, honoured by prediction."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.train import precision
from medlossy.train.config import TrainConfig
from medlossy.train.inference import load_model
from medlossy.train.loop import train_model
from medlossy.train.precision import native_bfloat16, uses_bfloat16

CONFIG = TrainConfig.from_preset(
    "lowres", target_spacing=(6.0, 6.0, 6.0), patch_size=(16, 16, 16), filters=(4, 8, 16),
    epochs=1, iterations_per_epoch=2, batch_size=1, folds=2, fold=0, seed=0, device="cpu")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("data"), 4,
                                 PhantomConfig(shape=(24, 24, 16), spacing=(6.0, 6.0, 6.0)))


def _cpu_instructions(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [
    (True, False, True), (False, True, True), (False, False, False)])
def test_auto_uses_bfloat16_only_on_cpus_that_compute_it(monkeypatch, amx: bool,
                                                         avx512_bf16: bool,
                                                         expected: bool) -> None:
    _cpu_instructions(monkeypatch, amx, avx512_bf16)

    assert native_bfloat16(CPU) is expected
    assert uses_bfloat16(CPU, "auto") is expected
    assert uses_bfloat16(CPU, "bf16") is True
    assert uses_bfloat16(CPU, "fp32") is False


def test_a_torch_without_the_cpu_tests_means_float32(monkeypatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)

    assert native_bfloat16(CPU) is False


def test_cuda_always_uses_bfloat16_under_auto() -> None:
    assert uses_bfloat16(torch.device("cuda"), "auto") is True


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        replace(CONFIG, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.uses_bfloat16(CPU, "half")


def test_the_recipe_holds_the_arithmetic_so_a_cached_model_of_the_other_is_not_reused(
        monkeypatch) -> None:
    recipes = {chosen: replace(CONFIG, precision=chosen).recipe()
               for chosen in ("fp32", "bf16")}

    assert recipes["fp32"]["precision"] == "float32"
    assert recipes["bf16"]["precision"] == "bfloat16"
    assert recipes["fp32"] != recipes["bf16"]
    for native, same in ((True, "bf16"), (False, "fp32")):
        _cpu_instructions(monkeypatch, native, False)
        assert CONFIG.recipe() == recipes[same]  # "auto" as this machine resolves it


def test_a_bad_precision_in_model_json_names_the_file(dataset: Path, tmp_path: Path) -> None:
    folder = train_model(dataset, tmp_path / "model", replace(CONFIG, precision="fp32"))
    description = json.loads((folder / "model.json").read_text())
    description["config"]["precision"] = "fp16"
    (folder / "model.json").write_text(json.dumps(description))

    with pytest.raises(MedlossyError, match=r"model\.json"):
        load_model(folder, "cpu")


@pytest.mark.parametrize(("chosen", "recorded"), [("fp32", "float32"), ("bf16", "bfloat16")])
def test_model_json_records_the_precision_trained_in(dataset: Path, tmp_path: Path,
                                                     chosen: str, recorded: str) -> None:
    folder = train_model(dataset, tmp_path / chosen, replace(CONFIG, precision=chosen))

    description = json.loads((folder / "model.json").read_text())
    assert description["training"]["precision"] == recorded
    assert load_model(folder, "cpu").bfloat16 is (chosen == "bf16")


def test_bfloat16_trains_a_different_but_close_model(dataset: Path, tmp_path: Path) -> None:
    """Not float rounding alone: the weights differ, by training noise, not by a bug."""
    weights = {chosen: torch.load(train_model(dataset, tmp_path / chosen,
                                              replace(CONFIG, precision=chosen)) / "model.pt",
                                  weights_only=True)["network"]
               for chosen in ("fp32", "bf16")}

    differences = [(weights["fp32"][k] - weights["bf16"][k]).abs().max().item()
                   for k in weights["fp32"] if weights["fp32"][k].is_floating_point()]
    assert max(differences) > 0
    assert max(differences) < 0.05


def test_an_older_model_without_a_precision_predicts_as_auto(dataset: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    folder = train_model(dataset, tmp_path / "model", replace(CONFIG, precision="fp32"))
    description = json.loads((folder / "model.json").read_text())
    del description["config"]["precision"]
    (folder / "model.json").write_text(json.dumps(description))

    for native in (True, False):
        _cpu_instructions(monkeypatch, native, False)
        assert load_model(folder, "cpu").bfloat16 is native
