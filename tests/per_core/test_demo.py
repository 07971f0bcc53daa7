"""``python -m per_core.demo``: user errors are one line and exit 2, like the other CLIs."""

import pytest

from per_core.demo import main
from per_core.rundir import RunDir


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--epochs", "0"], "epochs"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_bad_values_print_one_error_line(tmp_path, capsys, argv, match):
    assert main([*argv, "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0] and "Traceback" not in err[0]
    assert out == ""  # an audit: "== training vanilla into ..." came first


def test_an_out_that_is_a_file_prints_one_error_line(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert main(["--out", str(target), "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and target.read_text() == "keep me"


def test_an_out_that_is_a_run_directory_is_refused_and_left_alone(tmp_path, capsys):
    # before: the three demo runs were written inside it, and the tools then disagreed about what it holds
    run = RunDir(tmp_path / "per")
    run.write_config({"method": "per", "lam": 0.01})
    assert main(["--out", str(run.root), "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {run.root} is a run directory; the demo writes its three runs below --out: choose another folder"
    ]
    assert [p.name for p in run.root.iterdir()] == ["config.json"]
    assert main(["--out", str(run.root / "demo"), "--no-progress", "--epochs", "1"]) == 2  # or a folder inside one
    assert capsys.readouterr().err == (
        f"error: {run.root / 'demo'} is inside the run directory {run.root}; the demo writes its three runs below "
        "--out: choose another folder\n"
    )
    assert [p.name for p in run.root.iterdir()] == ["config.json"]


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        main(["--epochs", "0", "--out", str(tmp_path / "d"), "--debug", "--no-progress"])


def test_the_table_shows_the_true_sw1_next_to_the_bound_measured_on_the_same_rows(tmp_path, capsys):
    # the bound alone ranks PER first; the table must show the distance it bounds, as analysis measures it
    from analysis import load_run
    from analysis.plot import sw1_table
    from per_core.configs import get_preset
    from per_core.train import train

    # another run in the folder (before: KeyError after all three trainings); it is not in the table
    train(get_preset("demo").for_method("l2").replace(epochs=2), tmp_path / "l2", progress=False)
    earlier = RunDir(tmp_path / "per")  # a run the demo replaces (documented), which it now says (a first-user pass)
    earlier.write_config({"method": "per", "lam": 0.01})
    earlier.write_metrics([{"epoch": e} for e in (1, 2, 3)])
    assert main(["--out", str(tmp_path), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"note: replacing the earlier run in {earlier.root} (3 finished epoch(s))" in out
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.split() == ["method", "val", "error", "%", "val", "loss", "SW1", "L_per", "s/epoch"]
    table = sw1_table(load_run(tmp_path), "eval", epochs=[2])
    table = table[table["run"] != "l2"]
    assert not any(line.startswith("l2 ") for line in out.splitlines())
    assert set(table["epoch"]) == {2} and len(table) == 3 * 6  # three runs x six layers, the last epoch only
    for method, rows in table.groupby("method"):
        line = next(line for line in out.splitlines() if line.startswith(f"{method} "))
        sw1, lper = (float(v) for v in line.split()[3:5])
        assert sw1 == pytest.approx(rows["sw1"].mean(), abs=5e-4) and lper == pytest.approx(
            rows["lper"].mean(), abs=5e-4
        )
        assert sw1 < lper
    assert "on the 256 eval rows kept at the last epoch" in out and "a lower L_per is not a smaller SW1" in out
