"""Run-level distance tables and the `python -m analysis.bounds RUN_DIR` command."""

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import analysis.tables as tables
from analysis.bounds import main
from analysis.distances import w1_to_normal
from analysis.io import SKIP_BAD_HINT
from analysis.recorder import ActivationRecorder
from per_core.rundir import RunDir


def fake_run(root, method, data_per_epoch, reservoir=True):
    """A run directory whose one layer recorded exactly the given (n, units) arrays, one per epoch."""
    rd = RunDir(root)
    rd.write_config({"method": method, "epochs": len(data_per_epoch)})
    layer = nn.Identity()
    rec = ActivationRecorder(nn.Sequential(layer), {"layer1": layer}, reservoir=256, reservoir_every=1)
    for epoch, X in enumerate(data_per_epoch, start=1):
        rec.start_epoch(epoch, reservoir=reservoir)
        layer.train()
        layer(torch.as_tensor(X, dtype=torch.float32))
        rec.end_epoch()
        rec.save(rd, epoch)
    rd.write_metrics([{"epoch": e, "val_error": 1.0} for e in range(1, len(data_per_epoch) + 1)])
    return rd


def test_bounds_cli_writes_tables_and_flags_collapse(tmp_path, capsys):
    rng = np.random.default_rng(0)
    fake_run(tmp_path / "ok", "vanilla", [rng.normal(size=(2000, 4)) for _ in range(2)])
    fake_run(tmp_path / "shrunk", "per", [0.05 * rng.normal(size=(2000, 4))])
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"{tmp_path}: 3 reservoirs checked, one per (run, split, epoch, layer) (2 runs, splits train); 0 violations\n"
        in out
    )
    assert out.splitlines()[1].startswith("  collapsed (projected std < 0.5 and L_per < 1.128: activations of small")
    assert out.splitlines()[1].endswith("): ok (vanilla) 0 of 2, shrunk (per) 1 of 1")  # per run, out of its rows
    b = pd.read_csv(tmp_path / "shrunk" / "analysis" / "bounds.csv")
    assert bool(b["collapsed"].iloc[0]) and b["sw1"].iloc[0] > 0.7 and b["lper"].iloc[0] < 0.85
    ok = pd.read_csv(tmp_path / "ok" / "analysis" / "bounds.csv")
    assert len(ok) == 2 and (ok["sw1"] <= ok["lper"]).all() and ok["passed"].all() and not ok["collapsed"].any()
    assert (ok["sw1"] < 0.1).all()  # 256 Gaussian rows: only finite-sample distance


def test_bounds_cli_does_not_read_the_metrics_it_does_not_use(tmp_path, capsys):
    rd = fake_run(tmp_path / "r", "vanilla", [np.random.default_rng(0).normal(size=(500, 3))])
    rd.metrics_path.write_text('{"epoch": 1, "val_')  # damaged: the activations are intact
    assert main([str(rd.root), "--no-progress"]) == 0, capsys.readouterr().err
    assert (rd.root / "analysis" / "bounds.csv").is_file()


def test_bounds_cli_names_a_damaged_file_and_points_to_skip_bad(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rd = fake_run(tmp_path / "r", "vanilla", [rng.normal(size=(500, 3)) for _ in range(2)])
    bad = rd.activation_path(2)
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    assert main([str(rd.root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.endswith(f"; {SKIP_BAD_HINT}\n")
    assert main([str(rd.root), "--no-progress", "--skip-bad"]) == 0
    assert f"skipped: {bad}" in capsys.readouterr().err


def test_bounds_cli_says_when_skip_bad_left_nothing_to_read(tmp_path, capsys):
    rd = fake_run(tmp_path / "r", "vanilla", [np.random.default_rng(0).normal(size=(500, 3))])
    rd.config_path.write_text("{")  # the only run's config: --skip-bad leaves the whole run out
    assert main([str(rd.root), "--no-progress", "--skip-bad"]) == 2
    err = capsys.readouterr().err
    assert f"no readable activations in {rd.root}: --skip-bad left out 1 unreadable file(s)" in err
    assert "train with --record all" not in err  # the run did record: the old message blamed the recording


def test_unit_distances_from_histograms_bracket_the_exact_value(tmp_path):
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=5000), rng.exponential(size=5000) * 3, rng.normal(2, 0.5, size=5000)])
    fake_run(tmp_path / "r", "vanilla", [X.astype(np.float32)])
    assert main([str(tmp_path / "r")]) == 0
    d = pd.read_csv(tmp_path / "r" / "analysis" / "distances.csv")
    d = d[d["split"] == "train"].sort_values("unit")
    exact = [w1_to_normal(X[:, u].astype(np.float32).astype(np.float64)) for u in range(3)]
    assert np.all(np.abs(d["w1_hist"].to_numpy() - exact) <= d["w1_hist_error"].to_numpy() + 1e-9)
    err = d["w1_hist_error"].to_numpy()
    assert err[0] <= 0.25 and err[2] <= 0.25  # inside [-10, 10]: half a bin width at most
    assert err[1] > 0.25  # exponential * 3 overflows past 10: its overflow bin [10, max] is wide


def test_bounds_cli_shows_progress_on_a_terminal_stderr_only(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(3)
    fake_run(tmp_path / "r", "per", [rng.normal(size=(300, 3)) for _ in range(2)])
    assert main([str(tmp_path / "r")]) == 0  # stderr is captured, not a terminal: like a log file or a pipe
    plain = capsys.readouterr()
    assert plain.err == ""  # before: the bar's carriage-return updates went into logs and pipes
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([str(tmp_path / "r")]) == 0
    with_bar = capsys.readouterr()
    assert "bounds: " in with_bar.err and "/2 [" in with_bar.err and "layer-epoch" in with_bar.err  # tqdm's bar
    assert main([str(tmp_path / "r"), "--no-progress"]) == 0
    without = capsys.readouterr()
    assert without.err == "" and without.out == with_bar.out == plain.out


def test_bounds_help_documents_every_column_of_both_tables(tmp_path, capsys):
    fake_run(tmp_path / "r", "per", [np.random.default_rng(4).normal(size=(300, 2))])
    assert main([str(tmp_path / "r"), "--no-progress"]) == 0
    columns = {
        name: pd.read_csv(tmp_path / "r" / "analysis" / name).columns.tolist()
        for name in ("bounds.csv", "distances.csv")
    }
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for col in columns["bounds.csv"]:
        assert f"\n- {col}: " in help_text, col
    shared = "- run, method, split, epoch, layer: as in bounds.csv"
    for col in columns["distances.csv"]:
        assert f"\n- {col}: " in help_text or col in shared.split(":")[0], col
    assert shared in help_text
    assert "|W1(values, N(0, 1)) - w1_hist| <=\n  w1_hist_error" in help_text  # what the error bounds
    assert "sw1 <= w1 + w1_slack is rigorous" in help_text


def test_bounds_cli_without_activations_fails_and_writes_nothing(tmp_path, capsys):
    rd = RunDir(tmp_path / "none")
    rd.write_config({"method": "per", "record": "none"})
    rd.write_metrics([{"epoch": 1, "val_error": 1.0}])
    assert main([str(rd.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"error: no activations recorded in {rd.root}: train with --record all (or a list of layers, "
        "e.g. --record layer3)\n"
    )
    assert not (rd.root / "analysis").exists()
    fake_run(tmp_path / "rec", "vanilla", [np.random.default_rng(5).normal(size=(300, 2))])  # a sweep of both
    assert main([str(tmp_path), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped: run none: no activations recorded" in captured.err
    assert not (rd.root / "analysis").exists() and (tmp_path / "rec" / "analysis" / "bounds.csv").exists()


@pytest.mark.parametrize("module", ["analysis.bounds", "analysis.plot"])
def test_a_file_given_as_run_is_named_a_file_with_its_folder(tmp_path, capsys, module):
    import importlib

    rd = fake_run(tmp_path / "r", "per", [np.random.default_rng(6).normal(size=(50, 2))])
    assert importlib.import_module(module).main([str(rd.config_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {rd.config_path} is a file, not a run directory: give the run directory it belongs to, {rd.root}\n"
    )


def test_bounds_cli_user_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such directory" in err
    with pytest.raises(SystemExit):
        main([])


@pytest.mark.parametrize(
    ("broken", "what"),
    [
        ({"per_slice_ok": False, "per_slice_max_violation": 0.25}, "SW1 > L_per on a slice"),
        ({"w1_ok": False}, "SW1 > W1"),
    ],
)
def test_bounds_cli_reports_a_violation_loudly(tmp_path, capsys, monkeypatch, broken, what):
    real = tables.check_bounds

    def violated(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), **broken)

    monkeypatch.setattr(tables, "check_bounds", violated)  # what layer_bounds calls
    rng = np.random.default_rng(2)
    fake_run(tmp_path / "bad", "per", [rng.normal(size=(300, 3)) for _ in range(2)])
    assert main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("VIOLATION")]
    assert len(lines) == 2, captured.err
    for line in lines:
        assert what in line and "run bad, split train, layer layer1, epoch " in line
    assert sorted(line.split(" epoch ")[1].split()[0] for line in lines) == ["1", "2"]
    assert (
        "2 reservoirs checked, one per (run, split, epoch, layer) (1 run, splits train); 2 violations" in captured.out
    )
    assert not pd.read_csv(tmp_path / "bad" / "analysis" / "bounds.csv")["passed"].any()


def test_nonfinite_activations_are_counted_and_named_never_dropped_silently(tmp_path, capsys):
    # before: a reservoir of NaN rows was left out of bounds.csv, the CLI said "2 reservoirs checked ... 0 violations",
    # and rows with a NaN only lowered `rows`; the units' NaN counts reached no table
    rng = np.random.default_rng(0)
    partly = rng.normal(size=(200, 3))
    partly[:5, 1] = np.nan
    partly[5, 0] = np.inf
    fake_run(tmp_path / "r", "per", [rng.normal(size=(200, 3)), partly, np.full((200, 3), np.nan)])
    assert main([str(tmp_path / "r"), "--no-progress"]) == 0  # no bound was violated
    out, err = capsys.readouterr()
    b = pd.read_csv(tmp_path / "r" / "analysis" / "bounds.csv")
    assert b["epoch"].tolist() == [1, 2, 3]
    assert b["rows"].tolist() == [200, 194, 0] and b["nonfinite_rows"].tolist() == [0, 6, 200]
    assert b["passed"].tolist() == [True, True, False] and np.isnan(b["sw1"].iloc[2]) and np.isnan(b["lper"].iloc[2])
    assert "2 reservoirs checked" in out and "0 violations; 1 without a finite row, not checked" in out
    assert "VIOLATION" not in err
    assert (
        "note: run r, split train, layer layer1: reservoir rows with NaN or inf left out at epoch(s) 2 (6 of 200), "
        "3 (200 of 200); nothing checked at epoch(s) 3: no finite row" in err
    )
    d = pd.read_csv(tmp_path / "r" / "analysis" / "distances.csv")
    assert d.loc[d["epoch"] == 2, "nonfinite"].tolist() == [1, 5, 0]
    assert (
        d.loc[d["epoch"] == 3, "nonfinite"].tolist() == [200, 200, 200]
        and d.loc[d["epoch"] == 3, "w1_hist"].isna().all()
    )


def test_a_run_the_tables_cannot_be_written_into_fails_before_computing(tmp_path, capsys, monkeypatch):
    # a first-user pass: on a read-only run directory analysis.bounds computed for a minute, then failed to write
    fake_run(tmp_path / "ro", "vanilla", [np.random.default_rng(0).normal(size=(300, 4))])

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("computed before checking that the tables can be written")

    monkeypatch.setattr(tables, "layer_bounds", never)
    fake_run(tmp_path / "file", "vanilla", [np.random.default_rng(1).normal(size=(300, 4))])
    (tmp_path / "file" / "analysis").write_text("not a folder")
    assert main([str(tmp_path / "file")]) == 2
    assert "(a file is in the way)" in capsys.readouterr().err
    monkeypatch.setattr(tables.tempfile, "TemporaryFile", read_only)  # root ignores permission bits: simulated
    assert main([str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write the tables into {tmp_path / 'ro' / 'analysis'} (Read-only file system)" in err
