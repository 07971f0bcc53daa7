"""Sweeps: layout, skip/resume of finished runs, and the mean +- std table."""

import json
import re

import numpy as np
import pytest

from per_core import sweep
from per_core.configs import LAMBDA_GRIDS, PENALTY_GRIDS, PENALTY_LAMS, get_preset, lambda_grid
from per_core.rundir import RunDir
from per_core.sweep import main, results_table, run_sweep


def test_sweep_layout_table_and_skip(tmp_path, capsys):
    base = get_preset("demo").replace(record=None).as_smoke()
    runs = run_sweep(base, tmp_path, ["vanilla", "per"], [0, 1], lams=[0.01, 0.1], progress=False)
    names = sorted(str(r.relative_to(tmp_path)) for r in runs)
    assert names == sorted(
        [
            "vanilla/seed0",
            "vanilla/seed1",
            "per-lam0.01/seed0",
            "per-lam0.01/seed1",
            "per-lam0.1/seed0",
            "per-lam0.1/seed1",
        ]
    )
    text, entries = results_table(tmp_path)
    per = [e for e in entries if e["method"] == "per"]
    assert [e["lam"] for e in per] == [0.01, 0.1] and all(e["n"] == 2 for e in entries)
    # mean and sample std over the seeds' final val_error
    vals = [
        json.loads((tmp_path / "vanilla" / f"seed{s}" / "metrics.jsonl").read_text().splitlines()[-1])["val_error"]
        for s in (0, 1)
    ]
    van = next(e for e in entries if e["method"] == "vanilla")
    assert van["mean"] == np.mean(vals) and van["std"] == np.std(vals, ddof=1)
    assert "* best lambda" in text and "     2 *" in text  # a starred row, and its footnote
    one_lam, _ = results_table(tmp_path / "per-lam0.01")  # one lambda, nothing to choose: no star, no footnote
    assert "*" not in one_lam
    capsys.readouterr()
    run_sweep(base, tmp_path, ["vanilla"], [0], progress=False)  # finished: skipped, not retrained
    assert "finished, skipped" in capsys.readouterr().out


def test_a_finished_sweep_is_extended_by_more_epochs(tmp_path, capsys):
    argv = ["--methods", "vanilla", "--seeds", "0", "--smoke", "--no-record", "--no-progress", "--out", str(tmp_path)]
    assert get_preset("demo").milestones[0] == 20  # the extension crosses it
    assert main([*argv, "--epochs", "20"]) == 0
    assert main([*argv, "--epochs", "21"]) == 0, capsys.readouterr().err
    run = RunDir(tmp_path / "vanilla" / "seed0")
    metrics = run.read_metrics()
    assert [m["epoch"] for m in metrics] == list(range(1, 22))
    assert metrics[-1]["lr"] == pytest.approx(metrics[0]["lr"] * get_preset("demo").gamma)  # the milestone applied
    config = run.read_config()
    assert config["milestones"] == get_preset("demo").milestones  # the preset's schedule, never cut
    assert config["resumed"][0]["changed"] == {"epochs": [20, 21]}
    capsys.readouterr()
    # a smaller --epochs retrains nothing, and says so; the table says when its rows end at different epochs
    assert main([*argv[:-2], "--methods", "vanilla,bn", "--out", str(tmp_path), "--epochs", "20"]) == 0
    out = capsys.readouterr().out
    assert "vanilla/seed0: finished, skipped (it trained 21 epochs, more than --epochs 20)" in out
    assert "note: the runs end at different epochs (20, 21)" in out and "--epochs 21 to extend" in out
    assert len(run.read_metrics()) == 21


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "nope"], "--methods must be a comma-separated list of vanilla"),
        (["--methods", ""], "--methods must be"),
        (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
        (["--lams", "x"], "--lams must be comma-separated numbers"),
        (["--lams", "-1"], "--lams must be finite numbers >= 0"),
        (["--epochs", "0"], "epochs"),
        (["--per-locations", "zero"], "--per-locations must be a positive integer or 'all'"),
        (["--per-locations", "0"], "--per-locations must be a positive integer or 'all'"),
        (["--methods", "vanilla,rbn"], "--method rbn is for the lstm_lm presets (e.g. corpus-lstm); preset demo"),
        # an audit: the runs' seeds were checked as each run started, after the earlier seeds had trained
        (["--methods", "vanilla", "--seeds", "0,-1"], "seed must be an integer in [0, 2**64), got -1"),
        (["--methods", "vanilla", "--seeds", f"0,{2**64}"], "seed must be an integer in [0, 2**64)"),
    ],
)
def test_sweep_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "s"), "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # nothing was started


def test_sweep_cli_table_of_a_missing_sweep_and_ctrl_c(tmp_path, capsys, monkeypatch):
    assert main(["--table", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    assert main(["--out", str(tmp_path / "s"), "--smoke"]) == 130
    assert "run the same command again" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        main(["--out", str(tmp_path / "s"), "--smoke", "--debug"])


def test_paper_layout_with_test_perplexity_for_a_table3_preset(tmp_path):
    base = get_preset("table3-lstm-ptb").replace(record=None, epochs=1).as_smoke()
    run_sweep(base, tmp_path, ["vanilla", "per"], [0, 1], lams=[1e-4, 3e-4], progress=False)
    text, entries = results_table(tmp_path)
    per = [e for e in entries if e["method"] == "per"]
    assert {e["metric"] for e in entries} == {"val_ppl"} and all(e["test_metric"] == "test_ppl" for e in entries)
    assert "val ppl (mean +- std)" in text.splitlines()[0] and "test ppl (mean +- std)" in text.splitlines()[0]
    # --smoke runs (synthetic data): the paper's real-data numbers are left out, and the table says why
    assert "paper val" not in text and "123.20" not in text and "not comparable with --smoke" in text
    for config in tmp_path.rglob("config.json"):  # the same runs as if on real data: the paper's rows are back
        config.write_text(json.dumps({**json.loads(config.read_text()), "smoke": False}))
    text, entries = results_table(tmp_path)
    assert "not comparable" not in text
    rows = [
        json.loads((tmp_path / "per-lam0.0001" / f"seed{s}" / "metrics.jsonl").read_text().splitlines()[-1])
        for s in (0, 1)
    ]
    # each run's best validation epoch, val and test of its model (as pytorch/examples), not the last epoch's
    assert per[0]["mean"] == pytest.approx(np.mean([r["best_val_ppl"] for r in rows]))
    assert per[0]["test_mean"] == pytest.approx(np.mean([r["best_test_ppl"] for r in rows]))
    assert "note: language models are counted at each run's best validation epoch" in text
    layout = text.split("in the paper's layout")[1].splitlines()
    assert layout[1].split() == ["vanilla", "per"]
    best = min(per, key=lambda e: e["mean"])
    assert f"{best['mean']:.2f} +- {best['std']:.2f} (2)" in layout[2]  # each method at its best lambda
    assert layout[3].split()[-2:] == ["123.20", "118.50"] and layout[5].split()[-2:] == ["122.00", "114.50"]


def test_a_diverging_run_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    base = get_preset("demo").replace(record=None).as_smoke()
    run_sweep(base.replace(lr=1e12), tmp_path, ["vanilla"], [0], progress=False)
    run_sweep(base, tmp_path, ["bn"], [0], progress=False)
    assert "FAILED: non-finite" in capsys.readouterr().out
    text, entries = results_table(tmp_path)
    assert "(1 diverged)" in text and {e["method"]: e["failed"] for e in entries} == {"vanilla": 1, "bn": 0}


def fake_run(path, method, lam, val_error):
    """A finished one-epoch demo run with the given final validation error (no training)."""
    run = RunDir(path)
    run.write_config(get_preset("demo").replace(method=method, lam=lam, epochs=1).to_dict())
    run.write_metrics([{"epoch": 1, "val_error": val_error, "val_loss": 1.0}])


def test_the_best_lambda_is_the_lowest_mean_as_shown_and_on_a_tie_the_smallest(tmp_path):
    # 50.004 and 50.001 both show as 50.00: a tie, marked at the smaller lambda; 100 % everywhere: the smallest
    for lam, err in [(0.1, 50.001), (0.01, 50.004), (1.0, 60.0)]:
        fake_run(tmp_path / f"per-lam{lam:g}" / "seed0", "per", lam, err)
    for lam in (0.3, 0.03, 0.003):
        fake_run(tmp_path / f"l2-lam{lam:g}" / "seed0", "l2", lam, 100.0)
    text, entries = results_table(tmp_path)
    marked = {(r.split()[0], float(r.split()[1])) for r in text.splitlines() if r.rstrip().endswith("*")}
    assert marked == {("per", 0.01), ("l2", 0.003)}
    assert "on a tie the smallest lambda" in text and "val error % (mean +- std)" in text.splitlines()[0]
    best = sweep.best_lambdas(entries[::-1])  # whatever the order of the entries
    assert {m: e["lam"] for m, e in best.items()} == {"per": 0.01, "l2": 0.003}


def test_loss_penalties_sweep_at_their_own_strengths_and_grids(tmp_path, capsys):
    # before: vcl/l1/l2 ran at PER's lambda and searched PER's grid (1e-6..3e-4), where they do nothing
    base = get_preset("demo").replace(record=None).as_smoke().replace(epochs=1)
    run_sweep(base, tmp_path / "d", ["l2", "vcl"], [0], progress=False)
    lams = {m: RunDir(tmp_path / "d" / m / "seed0").read_config()["lam"] for m in ("l2", "vcl")}
    assert lams == {"l2": PENALTY_LAMS["l2"], "vcl": PENALTY_LAMS["vcl"]}
    argv = ["--methods", "per,l1", "--lams", "grid", "--smoke", "--no-record", "--no-progress", "--epochs", "1"]
    assert main([*argv, "--seeds", "0", "--out", str(tmp_path / "g")]) == 0
    names = sorted(p.parent.name for p in (tmp_path / "g").glob("*/seed0"))
    want = [f"l1-lam{x:g}" for x in PENALTY_GRIDS["l1"]] + [f"per-lam{x:g}" for x in LAMBDA_GRIDS["demo"]]
    assert names == sorted(want)
    assert lambda_grid("table2-relu-cifar10", "per") == LAMBDA_GRIDS["table2-relu-cifar10"]


def test_a_sweep_under_torchrun_is_refused_with_how_to_run_it(tmp_path, capsys, monkeypatch):
    # before: train() started and ended a process group per run; the second run hung or gloo failed to connect
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--methods", "vanilla", "--smoke", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a sweep runs in one process" in err[0] and not (tmp_path / "s").exists()
    assert main(["--table", str(tmp_path / "missing")]) == 2  # printing a table is not refused for that reason
    assert "one process" not in capsys.readouterr().err


def test_a_finished_run_of_another_config_is_refused_not_reported(tmp_path, capsys):
    argv = ["--methods", "per", "--seeds", "0", "--smoke", "--no-record", "--no-progress", "--out", str(tmp_path)]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    # the same folder asked with other settings: before, "finished, skipped" and the old run's numbers in the table
    assert main([*argv, "--epochs", "1", "--per-locations", "all"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of another config (per_locations: saved 4 vs now 'all')" in err and "--out" in err
    assert main([*argv, "--epochs", "1"]) == 0  # the same settings still skip it
    # refused before anything trains (vanilla comes first); then vanilla, finished, answers a rerun that asks
    # for recording and for PER settings, which change neither its training nor what the table reports
    assert main([*argv, "--epochs", "1", "--methods", "vanilla,per", "--per-locations", "all"]) == 2
    assert not (tmp_path / "vanilla").exists()
    assert main([*argv, "--epochs", "1", "--methods", "vanilla"]) == 0
    recording = [a for a in argv if a != "--no-record"]
    assert main([*recording, "--epochs", "1", "--methods", "vanilla", "--per-locations", "all"]) == 0
    assert "vanilla/seed0: finished, skipped" in capsys.readouterr().out


def test_a_seed_in_two_folders_counts_once_and_close_lambdas_keep_their_own_folders(tmp_path, capsys):
    argv = ["--seeds", "0", "--smoke", "--no-record", "--no-progress", "--epochs", "1", "--out", str(tmp_path)]
    assert main(["--methods", "per", *argv]) == 0  # per/seed0 at per's default lambda
    default = get_preset("demo").for_method("per").lam
    assert main(["--methods", "per", "--lams", f"{default},0.0010000001,0.001", *argv]) == 0
    assert (tmp_path / "per-lam0.0010000001").is_dir() and (tmp_path / "per-lam0.001").is_dir()
    text, entries = results_table(tmp_path)
    assert sorted(e["lam"] for e in entries) == sorted([default, 0.0010000001, 0.001])
    assert all(e["n"] == 1 for e in entries)  # per/seed0 and per-lam<default>/seed0 are one seed, not two
    assert f"{tmp_path / f'per-lam{default:g}' / 'seed0'} repeats seed 0; counted: {tmp_path / 'per' / 'seed0'}" in text
    (tmp_path / "per" / "seed0" / sweep.FAILED).write_text("diverged\n")  # the first folder's copy failed:
    text, entries = results_table(tmp_path)  # the finished copy counts, and the row shows no divergence
    row = next(e for e in entries if e["lam"] == default)
    assert (row["n"], row["failed"]) == (1, 0)
    assert f"counted: {tmp_path / f'per-lam{default:g}' / 'seed0'}" in text


def test_an_extended_run_that_stopped_is_unfinished_in_the_sweep_and_named_under_the_table(tmp_path, capsys):
    # before: the sweep called it "finished, skipped (it trained 47 epochs, more than --epochs 4)" while the table
    # left it out without a word (2 seeds counted of the 3 asked for)
    cfg = get_preset("demo").for_method("vanilla").replace(epochs=4, record=None)
    for seed in (0, 1):
        run = RunDir(tmp_path / "vanilla" / f"seed{seed}")
        run.write_config(cfg.replace(seed=seed).to_dict())
        run.write_metrics([{"epoch": e, "val_error": 5.0 + seed, "val_loss": 1.0} for e in range(1, 5)])
    stopped = RunDir(tmp_path / "vanilla" / "seed2")
    stopped.write_config(cfg.replace(seed=2, epochs=60).to_dict())
    stopped.write_metrics([{"epoch": e, "val_error": 9.0, "val_loss": 1.0} for e in range(1, 48)])
    argv = ["--preset", "demo", "--methods", "vanilla", "--seeds", "0,1,2", "--epochs", "4", "--no-record"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"== {stopped.root}: unfinished, skipped: it was extended to 60 epochs and stopped after 47" in out
    assert "finished, skipped (it trained 47" not in out
    assert f"note: 1 unfinished run(s) left out: {stopped.root} (epoch 47 of 60)" in out
    assert re.search(r"vanilla +- +5\.50% \+- 0\.71 +2\n", out)


def test_a_table_keeps_each_metric_under_its_own_heading_and_names_runs_it_cannot_read(tmp_path):
    # before: an LM run and an image run shared the first one's heading (a val error % under "val ppl"), and a
    # config.json written by hand stopped the table with KeyError: 'seed'
    # (and one method, lambda and seed on both tasks was one row: the LM run was dropped as "holds seed 0 with other
    # settings", or its seed counted in the image run's mean)
    lm = RunDir(tmp_path / "lm" / "per-lam0.01" / "seed0")
    lm.write_config(get_preset("corpus-lstm").replace(method="per", lam=0.01, epochs=2).to_dict())
    lm.write_metrics([{"epoch": e, "val_loss": 4.0, "val_ppl": 53.83, "test_ppl": 52.59} for e in (1, 2)])
    fake_run(tmp_path / "per-lam0.01" / "seed0", "per", 0.01, 72.70)
    quick = RunDir(tmp_path / "quick")
    quick.write_config({"method": "per", "lam": 0.01})
    text, entries = results_table(tmp_path)
    lines = text.splitlines()
    assert lines[0] == "small_cnn(activation=elu, depth=6, width=32) on digits:"
    assert lines[1].split()[2:4] == ["val", "error"] and lines[2].split() == ["per", "0.01", "72.70%", "+-", "n/a", "1"]
    assert lines[4].startswith("lstm_lm(") and lines[4].endswith(") on corpus:")
    assert lines[5].split()[:4] == ["method", "lambda", "val", "ppl"]
    assert lines[6].split() == ["per", "0.01", "53.83", "+-", "n/a", "52.59", "+-", "n/a", "1"]
    assert f"note: left out: {quick.config_path} was not written by per_core.train" in text
    assert "seed 0" not in text  # two tasks, two runs: neither repeats the other
    assert "different epochs" not in text  # 2 LM epochs and 1 image epoch are no unequal training of one task
    assert [e["metric"] for e in entries] == ["val_error", "val_ppl"]


def test_each_task_of_one_preset_gets_the_papers_layout(tmp_path):
    # before: an image sweep and an LM sweep in one folder were two presets, so neither got the paper's layout
    image = RunDir(tmp_path / "img" / "per-lam0.01" / "seed0")
    image.write_config(get_preset("table2-relu-cifar10").replace(method="per", lam=0.01, epochs=1).to_dict())
    image.write_metrics([{"epoch": 1, "val_error": 9.5, "val_loss": 0.3}])
    lm = RunDir(tmp_path / "lm" / "per-lam0.01" / "seed0")
    lm.write_config(get_preset("table3-lstm-ptb").replace(method="per", lam=0.01, epochs=1).to_dict())
    lm.write_metrics([{"epoch": 1, "val_loss": 4.4, "val_ppl": 80.1, "test_ppl": 77.0}])
    text, _ = results_table(tmp_path)
    assert "table2-relu-cifar10 in the paper's layout" in text and "table3-lstm-ptb in the paper's layout" in text


def test_a_smoke_task_leaves_out_the_papers_numbers_only_in_its_own_layout(tmp_path):
    # the final review: one smoke run of one task dropped the paper's numbers from the other task's layout too
    image = RunDir(tmp_path / "img" / "per-lam0.01" / "seed0")
    image.write_config(get_preset("table2-relu-cifar10").replace(method="per", lam=0.01, epochs=1).as_smoke().to_dict())
    image.write_metrics([{"epoch": e, "val_error": 90.0, "val_loss": 2.3} for e in (1, 2)])
    lm = RunDir(tmp_path / "lm" / "per-lam0.01" / "seed0")
    lm.write_config(get_preset("table3-lstm-ptb").replace(method="per", lam=0.01, epochs=1).to_dict())
    lm.write_metrics([{"epoch": 1, "val_loss": 4.4, "val_ppl": 80.1, "test_ppl": 77.0}])
    text, _ = results_table(tmp_path)
    image_block, lm_block = text.split("table2-relu-cifar10 in the paper's layout")[1].split("table3-lstm-ptb in")
    assert "left out" in image_block and "paper val error" not in image_block
    assert "left out" not in lm_block and "paper val ppl" in lm_block


def test_two_datasets_or_depths_of_one_task_never_share_a_row(tmp_path):
    # before: CIFAR-10 and CIFAR-100 runs of one method and lambda were averaged into one row without a word (and a
    # seed on both was dropped as "holds seed 0 with other settings"); ResNet-56 and ResNet-110 the same
    def run(name, preset, error, seed=0):
        r = RunDir(tmp_path / name / "per-lam0.0001" / f"seed{seed}")
        r.write_config(get_preset(preset).replace(method="per", lam=1e-4, epochs=1, seed=seed).to_dict())
        r.write_metrics([{"epoch": 1, "val_error": error, "val_loss": 1.0}])

    run("c10", "table2-relu-cifar10", 8.0)
    run("c10", "table2-relu-cifar10", 10.0, seed=1)
    run("c100", "table2-relu-cifar100", 30.0)
    run("r56", "table1-resnet56", 6.5)
    run("r110", "table1-resnet110", 6.0)
    text, entries = results_table(tmp_path)
    means = {e["task"]: (e["mean"], e["n"]) for e in entries}
    assert len(means) == 4 and (9.0, 2) in means.values() and (30.0, 1) in means.values()
    assert (6.5, 1) in means.values() and (6.0, 1) in means.values()
    assert "seed 0" not in text  # no run repeats another
    for title in means:
        assert f"\n{title}:\n" in f"\n{text}"
    assert any(t.endswith(" on cifar100") for t in means) and "resnet110 on cifar10" in means
    # each task is of one preset, so each gets the paper's layout with its own number
    for preset in ("table2-relu-cifar10", "table2-relu-cifar100", "table1-resnet56", "table1-resnet110"):
        assert f"{preset} in the paper's layout" in text


def test_smoke_runs_and_real_runs_of_one_preset_are_two_tasks(tmp_path):
    fake_run(tmp_path / "real" / "per-lam0.01" / "seed0", "per", 0.01, 2.0)
    smoke = RunDir(tmp_path / "smoke" / "per-lam0.01" / "seed0")
    smoke.write_config(get_preset("demo").replace(method="per", lam=0.01, epochs=1).as_smoke().to_dict())
    smoke.write_metrics([{"epoch": e, "val_error": 90.0, "val_loss": 2.3} for e in (1, 2)])
    text, entries = results_table(tmp_path)
    assert sorted(e["mean"] for e in entries) == [2.0, 90.0]
    assert "small_cnn(activation=elu, depth=6, width=32) on digits (--smoke: synthetic data):" in text


def test_a_row_whose_seeds_differ_in_settings_says_so(tmp_path):
    # a review: an old ResNet-110 run (no warm-up epoch) and a new one averaged into one row without a note
    def run(seed, **changes):
        r = RunDir(tmp_path / f"run{seed}")
        r.write_config(
            get_preset("table1-resnet110").replace(method="vanilla", epochs=1, seed=seed, **changes).to_dict()
        )
        r.write_metrics([{"epoch": 1, "val_error": 6.0 + seed, "val_loss": 0.3}])
        return r

    run(0)
    run(1, record_every=3)  # recording settings do not change what a row measures
    text, _ = results_table(tmp_path)
    assert "mixes settings" not in text
    run(3, n_slices=64, per_locations=None)  # PER's settings: vanilla only monitors L_per with them
    text, _ = results_table(tmp_path)
    assert "mixes settings" not in text
    old = run(2, warmup_epochs=0)
    text, entries = results_table(tmp_path)
    assert entries[0]["n"] == 4
    # the run apart from the common settings is named, not the first seed (a review: seed0 was blamed)
    assert (
        f"note: the vanilla row mixes settings: {old.root} (warmup_epochs: saved 0 vs now 1), against 3 run(s) like "
        f"{tmp_path / 'run0'}" in text
    )
    assert text.count("mixes settings") == 1


def test_an_out_that_is_a_run_directory_is_refused(tmp_path, capsys):
    # a first-user pass: the sweep trained its runs inside an existing run, and every reader (the table, the plots,
    # load_run) stopped at that run and showed it alone
    run = RunDir(tmp_path / "A")
    run.write_config({"method": "per", "lam": 0.01})
    assert main(["--preset", "demo", "--methods", "vanilla", "--seeds", "0", "--smoke", "--out", str(run.root)]) == 2
    assert "is a run directory; a sweep writes its runs below --out" in capsys.readouterr().err
    assert [p.name for p in run.root.iterdir()] == ["config.json"]


def test_runs_asked_for_twice_train_once_and_flags_a_table_ignores_are_named(tmp_path, capsys):
    # an audit: --lams 0.01,1e-2 --seeds 0,0 trained the same run four times, each over the last
    argv = ["--smoke", "--no-record", "--no-progress", "--methods", "per,per", "--lams", "0.01,1e-2", "--seeds", "0,0"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    out, err = capsys.readouterr()
    assert out.count(": training") == 1 and err == "note: asked for more than once, taken once: per-lam0.01/seed0\n"
    assert main(["--table", str(tmp_path / "s"), "--methods", "vanilla", "--smoke"]) == 0
    out, err = capsys.readouterr()
    assert err == "note: --table prints the table of an existing sweep: --methods, --smoke ignored\n"
    assert "per" in out and "vanilla" not in out
    assert main(["--table", str(tmp_path / "s")]) == 0 and capsys.readouterr().err == ""


def test_an_out_that_is_a_file_or_inside_a_run_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    run = RunDir(tmp_path / "A")
    run.write_config({"method": "per", "lam": 0.01})
    for out, message in (
        (
            tmp_path / "afile",
            f"error: --out {tmp_path / 'afile'} is a file, not a folder: choose a folder for the sweep",
        ),
        (run.root / "sweep", f"error: {run.root / 'sweep'} is inside the run directory {run.root}; a sweep writes"),
    ):
        assert main(["--methods", "vanilla", "--seeds", "0", "--smoke", "--out", str(out)]) == 2
        out_text, err = capsys.readouterr()
        assert err.startswith(message) and out_text == ""
    assert [p.name for p in run.root.iterdir()] == ["config.json"]


def test_a_run_without_its_checkpoint_stops_the_sweep_before_anything_trains(tmp_path, capsys):
    # a review: seed0 was extended, then seed1 (checkpoint deleted) failed halfway with advice for per_core.train
    argv = ["--smoke", "--no-record", "--no-progress", "--methods", "vanilla", "--seeds", "0,1", "--out", str(tmp_path)]
    assert main([*argv, "--epochs", "1"]) == 0
    (tmp_path / "vanilla" / "seed1" / "checkpoints" / "last.pt").unlink()
    capsys.readouterr()
    assert main([*argv, "--epochs", "2"]) == 2
    out, err = capsys.readouterr()
    seed1 = tmp_path / "vanilla" / "seed1"
    assert err == (
        f"error: {seed1} holds finished epochs (1 in metrics.jsonl) but its checkpoint last.pt is missing, so the "
        f"sweep cannot continue it; restore the checkpoint, or delete {seed1} to train it again\n"
    )
    assert out == "" and len(RunDir(tmp_path / "vanilla" / "seed0").read_metrics()) == 1  # seed0 not extended
    # a second review: with metrics.jsonl gone too, the activation files beyond epoch 1 say so (it trained over them)
    rec = ["--smoke", "--no-progress", "--methods", "vanilla", "--seeds", "0", "--out", str(tmp_path / "r")]
    assert main([*rec, "--epochs", "2"]) == 0
    run = RunDir(tmp_path / "r" / "vanilla" / "seed0")
    saved = run.checkpoint_path.read_bytes()
    run.metrics_path.unlink()
    run.checkpoint_path.unlink()
    capsys.readouterr()
    assert main([*rec, "--epochs", "3"]) == 2
    assert "holds finished epochs (1 activation file(s)) but its checkpoint" in capsys.readouterr().err
    # and metrics.jsonl gone with the checkpoint kept: resumed from it (it was overwritten from epoch 1)
    run.checkpoint_path.write_bytes(saved)
    assert main([*rec, "--epochs", "3"]) == 0
    assert f"== {run.root}: resuming" in capsys.readouterr().out
    assert [row["epoch"] for row in run.read_metrics()] == [1, 2, 3]


def test_the_table_leaves_out_values_that_are_no_numbers_and_says_so(tmp_path, capsys):
    # a review: "100.0" was counted as 100 and true as 1.0, "na" was an error naming no file, a list a traceback
    argv = ["--smoke", "--no-record", "--no-progress", "--methods", "vanilla", "--seeds", "0,1", "--out", str(tmp_path)]
    assert main([*argv, "--epochs", "1"]) == 0
    run = RunDir(tmp_path / "vanilla" / "seed0")
    rows = run.read_metrics()
    run.write_metrics([{**rows[0], "val_error": True}])
    capsys.readouterr()
    assert main(["--table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"note: left out: {run.root} (metrics.jsonl: values that are not numbers left out: val_error (1 line))" in out
    )
    # a third review: seed0's val_loss was then averaged alone under "seeds 2"; a run missing values is not counted
    other = RunDir(tmp_path / "vanilla" / "seed1").read_metrics()[-1]["val_error"]
    assert ["vanilla", "-", f"{other:.2f}%", "+-", "n/a", "1"] in [line.split() for line in out.splitlines()]


def test_the_plan_counts_epochs_as_the_table_does(tmp_path, capsys):
    # a review: a line with "epoch": "2" made the table call the run unfinished and advise rerunning the sweep,
    # whose plan counted it finished: the advice looped; now the sweep resumes it and its checkpoint restores the line
    argv = ["--smoke", "--no-record", "--no-progress", "--methods", "vanilla", "--seeds", "0", "--out", str(tmp_path)]
    assert main([*argv, "--epochs", "2"]) == 0
    run = RunDir(tmp_path / "vanilla" / "seed0")
    rows = run.read_metrics()
    run.write_metrics([rows[0], {**rows[1], "epoch": "2"}])
    capsys.readouterr()
    assert main([*argv, "--epochs", "2"]) == 0
    assert f"== {run.root}: resuming" in capsys.readouterr().out
    assert run.read_metrics() == rows
