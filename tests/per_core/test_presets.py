"""Every preset and every method runs end to end (``--smoke``: synthetic data of the real shape)."""

import math

import pytest

from per_core.configs import LAMBDA_GRIDS, PRESETS, get_preset
from per_core.data import DataError
from per_core.rundir import RunDir
from per_core.train import train


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_smoke_runs_with_per(tmp_path, name):
    cfg = get_preset(name).replace(method="per").as_smoke()
    metrics = train(cfg, tmp_path / name, progress=False)
    assert len(metrics) == 2 and math.isfinite(metrics[-1]["val_loss"])
    assert RunDir(tmp_path / name).read_config()["preset"] == name
    assert name in LAMBDA_GRIDS


@pytest.mark.parametrize("method", ["vanilla", "bn", "dbn", "vcl", "l1", "l2"])
def test_every_image_method_runs(tmp_path, method):
    metrics = train(get_preset("demo").replace(method=method).as_smoke(), tmp_path / method, progress=False)
    assert math.isfinite(metrics[-1]["train_loss"])


@pytest.mark.parametrize("method", ["vanilla", "rbn", "l1", "l2"])
def test_every_language_model_method_runs(tmp_path, method):
    metrics = train(get_preset("corpus-lstm").replace(method=method).as_smoke(), tmp_path / method, progress=False)
    assert math.isfinite(metrics[-1]["val_ppl"]) and "train_ppl" in metrics[-1]


def test_loss_penalties_change_training(tmp_path):
    base = get_preset("demo").as_smoke()
    runs = {m: train(base.replace(method=m, lam=1.0), tmp_path / m, progress=False) for m in ("vanilla", "l2")}
    assert runs["vanilla"][-1]["train_loss"] != runs["l2"][-1]["train_loss"]


def test_real_data_presets_say_which_files_are_missing(tmp_path):
    cfg = get_preset("table1-resnet56").replace(data_dir=str(tmp_path), epochs=1)
    with pytest.raises(DataError, match="data_batch_1"):
        train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="needs --data-dir"):
        train(get_preset("table3-lstm-ptb"), tmp_path / "s", progress=False)
