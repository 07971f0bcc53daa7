"""make figures: the theory figures and the run-based ones are written, and the trap is what it claims."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis.figures import main, point_mass_trap
from analysis.recorder import ActivationRecorder
from per_core.rundir import RunDir

RUN_FIGURES = ["figure1.png", "figure2.png", "metrics.png", "point_mass_trap.png", "ridgeline.png", "sw1_curves.png"]


def small_run(root, method, scales, seed, layers=("layer1", "layer2", "layer3")):
    """A run dir whose ``layers`` recorded N(0, s^2) rows (300 x 2) at each epoch, with metrics."""
    rd = RunDir(root)
    rd.write_config({"method": method, "epochs": len(scales)})
    mods = {name: nn.Identity() for name in layers}
    rec = ActivationRecorder(nn.ModuleDict(mods), mods, reservoir=128, reservoir_every=1)
    rng = np.random.default_rng(seed)
    for epoch, s in enumerate(scales, start=1):
        rows = {name: torch.as_tensor(s * rng.normal(size=(300, 2)), dtype=torch.float32) for name in mods}
        rec.start_epoch(epoch)
        for name, X in rows.items():
            mods[name](X)
        rec.end_epoch()
        with rec.eval_pass():
            for name, X in rows.items():
                mods[name](X)
        rec.save(rd, epoch)
    rd.write_metrics([{"epoch": e, "val_error": 10.0 / e, "train_loss": 1.0 / e} for e in range(1, len(scales) + 1)])


def test_point_mass_trap_shows_the_bound_falling_while_the_distance_rises():
    fig = point_mass_trap(n=400, dim=3, n_projections=32, steps=7)
    sw, lp = (line.get_ydata() for line in fig.axes[0].get_lines()[:2])
    scales = fig.axes[0].get_lines()[0].get_xdata()
    assert np.argmin(sw) == np.argmin(np.abs(scales - 1.0))  # the true distance is smallest at N(0, I)
    assert np.all(np.diff(lp) > 0) and math.isclose(lp[0], math.sqrt(2 / math.pi))  # the bound is smallest at 0
    assert sw[0] > sw[np.argmin(np.abs(scales - 1.0))] + 0.5


def test_cli_writes_the_theory_figures(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "note: without --runs only figure1 and point_mass_trap are drawn" in captured.err
    written = captured.out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["figure1.png", "point_mass_trap.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in ("figure1.png", "point_mass_trap.png"))
    assert main(["--out", str(tmp_path), "--runs", str(tmp_path / "missing")]) == 2


def test_cli_writes_the_run_figures_byte_for_byte_the_same_twice(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    small_run(sweep / "vanilla", "vanilla", [1.0, 1.5, 2.0], seed=0)
    small_run(sweep / "per", "per", [1.0, 0.5, 0.1], seed=1)
    for out in ("a", "b"):
        assert main(["--out", str(tmp_path / out), "--runs", str(sweep)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted({p.rsplit("/", 1)[-1] for p in written}) == RUN_FIGURES
    for name in RUN_FIGURES:
        a, b = ((tmp_path / out / name).read_bytes() for out in ("a", "b"))
        assert a == b, f"{name} differs between two runs"
        assert b"Matplotlib" not in a  # no version in the metadata
    assert main(["--out", str(tmp_path / "c"), "--runs", str(sweep), "--ridgeline", "layer9"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: unknown layer 'layer9' in split eval; layers: layer1, layer2, layer3\n"
    assert captured.out == "" and not (tmp_path / "c").exists()  # checked before any figure is written


def test_cli_writes_nothing_when_a_later_figure_fails(tmp_path, capsys, monkeypatch):
    import analysis.plot

    small_run(tmp_path / "sweep" / "per", "per", [1.0, 0.5], seed=2)

    def no_metrics(data):
        raise analysis.plot.PlotError("no metrics recorded in the sweep")

    monkeypatch.setattr(analysis.plot, "metrics_curves", no_metrics)  # drawn after figure2 and sw1_curves
    assert main(["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "sweep")]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: no metrics recorded in the sweep\n" and captured.out == ""
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):  # a usage error, before anything is drawn
        main(["--out", str(tmp_path / "file")])
    assert "--out " + str(tmp_path / "file") + " is a file: give a folder" in capsys.readouterr().err


def test_cli_runs_without_a_common_layer_get_advice_this_command_can_follow(tmp_path, capsys):
    # before: "choose layers with --layers", an option analysis.figures does not have
    small_run(tmp_path / "sweep" / "cnn", "vanilla", [1.0], seed=0, layers=("conv1",))
    small_run(tmp_path / "sweep" / "lstm", "per", [1.0], seed=1, layers=("lstm1",))
    assert main(["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "sweep"), "--ridgeline", "conv1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: the runs in {tmp_path / 'sweep'} recorded no layer in common in split eval (cnn: conv1; "
        "lstm: lstm1): analysis.figures draws the README figures of a demo sweep (python -m per_core.demo); plot "
        "these runs with python -m analysis.plot and its --layers, or each run separately\n"
    )
    assert captured.out == "" and not (tmp_path / "out").exists()
