"""The run-directory contract: atomic writes, permissions, readers that name the damaged file."""

import os
import stat

import numpy as np
import pytest

from per_core.rundir import FORMAT_VERSION, RunDir, RunDirError, atomic_write, find_runs


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    path = atomic_write(tmp_path / "a" / "f.txt", lambda f: f.write(b"one"))
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "f.txt", lambda f: f.write(b"old"))

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_readers_name_the_damaged_file_and_line(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(RunDirError, match="config.json is missing"):
        rd.read_config()
    rd.write_config({"method": "per"})
    assert rd.read_config()["format_version"] == FORMAT_VERSION
    rd.config_path.write_text('{"format_version": 99}')
    with pytest.raises(RunDirError, match="format version 99"):
        rd.read_config()
    rd.metrics_path.write_text('{"epoch": 1}\n{"epoch": 2, "val_\n[3]\n{"epoch": 4}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2: not valid JSON"):
        rd.read_metrics()
    bad: list[str] = []
    assert rd.read_metrics(on_bad=lambda err: bad.append(str(err))) == [{"epoch": 1}, {"epoch": 4}]
    assert [b.split("metrics.jsonl, ", 1)[1] for b in bad] == [
        "line 2: not valid JSON (Unterminated string starting at: line 1 column 14 (char 13))",
        "line 3: a JSON list, not an object of metrics",
    ]
    path = rd.write_npz(rd.activation_path(1), {"x": np.arange(3)})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(RunDirError, match=r"epoch_0001.npz: unreadable npz"):
        rd.read_npz(path)


def test_a_damaged_npy_header_is_a_run_dir_error_whatever_numpy_raises(tmp_path):
    # a byte-flip sweep: a header whose ')' became '(' makes numpy's header parser raise tokenize.TokenError, which
    # a list of "file error" types had let through as a traceback; the file must be named whatever the type
    import gc
    import io
    import zipfile

    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 40), dtype=np.int64))
    path = tmp_path / "epoch_0001.npz"
    with zipfile.ZipFile(path, "w") as z:  # a valid zip (its CRC matches) holding the damaged header
        z.writestr("x.npy", buf.getvalue().replace(b"(3, 40)", b"(3, 40("))
    rd = RunDir(tmp_path)
    with pytest.raises(RunDirError, match=r"epoch_0001.npz: unreadable npz \(TokenError: .*the file is damaged"):
        rd.read_npz(path)
    with pytest.raises(RunDirError, match="epoch_0001.npz: unreadable npz"), rd.open_npz(path) as z:
        z["x"]
    # a truncated zip: np.load fails on the file it opened; before, that file stayed open as long as the error lived
    cut = rd.write_npz(tmp_path / "epoch_0002.npz", {"x": np.arange(3)})
    cut.write_bytes(cut.read_bytes()[:-1])
    held: object = "no error raised"
    try:
        rd.read_npz(cut)
    except RunDirError:
        gc.collect()
        fds = os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []  # Linux lists them there
        held = [f for f in fds if os.path.realpath(f"/proc/self/fd/{f}") == str(cut)]
    assert held == []


def test_only_reads_of_the_file_are_damage_not_the_callers_own_errors(tmp_path):
    # a review: every exception inside open_npz's block read "the file is damaged", a bug in the caller's code too,
    # and with skip_bad every file was then skipped; and a nested open named the inner file for the outer's damage
    rd = RunDir(tmp_path)
    good = rd.write_npz(tmp_path / "good.npz", {"x": np.arange(3)})
    with pytest.raises(ZeroDivisionError), rd.open_npz(good) as z:
        assert z["x"].sum() == 3
        1 / 0  # noqa: B018
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(RunDirError, match="bad.npz: unreadable npz"), rd.open_npz(good) as z:
        with rd.open_npz(bad):
            pass
    with pytest.raises(RunDirError, match="good.npz: unreadable npz .*KeyError"), rd.open_npz(good) as z:
        z["missing"]
    with rd.open_npz(good) as z:
        assert z.header("x") == ((3,), np.dtype(np.int64)) and z.header("x", read_through=True).ndim == 1
        assert list(z) == ["x"] and len(z) == 1  # before: iterating asked for z[0], "damaged"
    with pytest.raises(ValueError, match="after its open_npz block ended") as err:
        z["x"]
    assert not isinstance(err.value, RunDirError)  # a caller's mistake is not damage
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.arange(3))  # one .npy array under an .npz name: a traceback before
    with pytest.raises(RunDirError, match="single.npz: unreadable npz .*not an npz archive"):
        rd.read_npz(single)


def test_find_runs_in_a_sweep_and_a_clear_error_elsewhere(tmp_path):
    for name in ("b", "a/x"):
        RunDir(tmp_path / name).write_config({"method": "per"})
    assert [r.root.relative_to(tmp_path).as_posix() for r in find_runs(tmp_path)] == ["a/x", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="neither a run directory nor a sweep"):
        find_runs(tmp_path / "empty")


def test_activation_epochs_lists_only_the_names_the_recorder_writes(tmp_path):
    # before: epoch_7.npz was listed as epoch 7, and reading it then failed on epoch_0007.npz, a file not there
    rd = RunDir(tmp_path)
    for name in ("epoch_0003.npz", "epoch_12345.npz", "epoch_7.npz", "epoch_00004.npz", "epoch_0005 (copy).npz"):
        rd.activations_dir.mkdir(exist_ok=True)
        (rd.activations_dir / name).write_bytes(b"")
    (rd.activations_dir / "epoch_\u00b2.npz").write_bytes(b"")  # a digit to str.isdigit, not to int()
    assert rd.activation_epochs() == [3, 12345]
    assert all(rd.activation_path(e).is_file() for e in rd.activation_epochs())


def test_reading_the_config_of_a_missing_folder_or_a_sweep_says_which(tmp_path):
    # a first-user pass: --resume of a missing folder, or of a sweep's folder, said "config.json is missing"
    with pytest.raises(RunDirError, match="no such directory"):
        RunDir(tmp_path / "nothing").read_config()
    RunDir(tmp_path / "sweep" / "per" / "seed0").write_config({"method": "per"})  # a sweep's layout
    with pytest.raises(RunDirError, match=r"holds runs \(per\), as a sweep does: name one of them"):
        RunDir(tmp_path / "sweep").read_config()


def test_numbers_only_keeps_the_trainers_rows_and_leaves_out_the_rest():
    from per_core.rundir import numbers_only

    nan, inf = float("nan"), float("inf")
    trainer = [{"epoch": 1, "val_loss": nan, "val_ppl": inf, "best_epoch": 1, "x": None}, {"epoch": 2.0, "lr": 0.1}]
    kept, said = numbers_only(trainer)
    assert kept == trainer and said == ""  # NaN/inf compare unequal: same objects, so == holds for the dicts
    other = [{"epoch": 10**400}, {"note": "lr tweak"}, {"epoch": True}, {"epoch": 1.5}, {"epoch": 3, "t": "12:00"}]
    kept, said = numbers_only(other)  # a review: 10**400 was an OverflowError traceback; no epoch counted as one
    assert kept == [{"epoch": 3}]
    assert said == "values that are not numbers left out: t (1 line); 4 lines without an integer epoch left out"
