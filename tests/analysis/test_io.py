"""load_run: round trip recorder -> run directory -> tidy frames, sweeps, damaged files, speed."""

import shutil
import time
import warnings
import zipfile

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from analysis.io import STATS_COLUMNS, load_run
from analysis.recorder import RECORDER_FORMAT, ActivationRecorder
from per_core.rundir import RunDir, RunDirError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Tap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_run(root, method="per", epochs=(1, 2, 3), *, config=None, seed=0):
    """A run directory recorded from known data; returns (RunDir, {(epoch, split, layer): rows})."""
    rd = RunDir(root)
    rd.write_config({"method": method, "lam": 1e-4, "model": {"name": "toy"}} if config is None else config)
    rd.write_metrics([{"epoch": e, "loss": 1.0 / e, "val_error": 0.5} for e in epochs])
    taps = nn.ModuleDict({"a": Tap(), "b": Tap()})
    rec = ActivationRecorder(taps, list(taps), reservoir=5, reservoir_every=2, reservoir_splits=("train", "eval"))
    data = {}
    for e in epochs:
        rec.start_epoch(e)
        xa = torch.randn(30, 3, generator=gen(seed + 10 * e)) * e
        xa[0, 1] = float("nan")
        xb = torch.randn(12, 2, generator=gen(seed + 10 * e + 1)) + 20.0  # all overflow the range
        taps["a"](xa)
        taps["b"](xb)
        rec.end_epoch()
        with rec.eval_pass():
            xe = torch.randn(7, 3, generator=gen(seed + 10 * e + 2))
            taps["a"](xe)
        rec.save(rd, e)
        data[e, "train", "a"], data[e, "train", "b"], data[e, "eval", "a"] = xa, xb, xe
    return rd, data


def test_round_trip_gives_numpy_statistics_and_raw_arrays(tmp_path):
    rd, data = make_run(tmp_path / "run")
    out = load_run(rd.root)
    assert out.skipped == [] and out.runs_list == ["run"]
    s = out.stats
    assert list(s.columns) == list(STATS_COLUMNS)
    assert len(s) == 3 * (3 + 2 + 3)  # epochs x (train a, train b, eval a) units
    assert set(s["method"]) == {"per"} and list(s["layer"].cat.categories) == ["a", "b"]
    for (epoch, split, layer), x in data.items():
        got = s[(s.epoch == epoch) & (s.split == split) & (s.layer == layer)].sort_values("unit")
        for u, v in enumerate(x.double().numpy().T):
            f = v[np.isfinite(v)]
            row = got.iloc[u]
            assert row["count"] == f.size and row["nan"] == v.size - f.size
            assert row["mean"] == pytest.approx(f.mean(), rel=1e-9, abs=1e-12)
            assert row["var"] == pytest.approx(f.var(), rel=1e-9)
            assert row["skew"] == pytest.approx(stats.skew(f), rel=1e-7, abs=1e-9)
            assert row["kurt"] == pytest.approx(stats.kurtosis(f), rel=1e-7, abs=1e-9)
            assert (row["min"], row["max"]) == (f.min(), f.max())
            assert row["over"] == (f > 10).sum() and row["under"] == (f < -10).sum()
        h = out.histogram("run", split, epoch, layer)
        assert h.edges.shape == (41,) and h.counts.shape == (x.shape[1], 40)
        for u, v in enumerate(x.numpy().T):
            np.testing.assert_array_equal(h.counts[u], np.histogram(v[np.isfinite(v)], bins=h.edges)[0])
        np.testing.assert_array_equal(h.over, got["over"].to_numpy())
    # reservoirs at even epochs only, joint rows of the recorded data
    assert out.index.query("reservoir > 0")["epoch"].unique().tolist() == [2]
    res = out.reservoir("run", "train", 2, "a")
    assert res.shape == (5, 3) and res.dtype == np.float32
    rows = data[2, "train", "a"].numpy()
    assert all(np.any(np.all((rows == r) | (np.isnan(rows) & np.isnan(r)), axis=1)) for r in res)
    with pytest.raises(KeyError, match="epoch_0001.npz.*train/a/reservoir"):
        out.reservoir("run", "train", 1, "a")
    with pytest.raises(KeyError, match="unknown run"):
        out.histogram("nope", "train", 1, "a")
    with pytest.raises(TypeError, match=r"\(run, split, epoch, layer\).*got split=2, epoch='train'"):
        out.histogram("run", 2, "train", "a")  # the frames' column order, epoch before split
    with pytest.raises(TypeError, match="epoch an integer"):
        out.reservoir("run", "train", 2.0, "a")
    assert out.histogram("run", "train", np.int64(2), "a").counts.shape == (3, 40)  # an epoch read from a frame


def test_metrics_config_and_index_frames(tmp_path):
    rd, _ = make_run(tmp_path / "r1", epochs=(1, 2))
    out = load_run(rd.root)
    assert list(out.metrics.columns[:2]) == ["run", "method"]
    assert out.metrics["loss"].tolist() == [1.0, 0.5] and set(out.metrics["run"]) == {"r1"}
    cfg = out.config
    assert cfg.loc[0, "run"] == "r1" and cfg.loc[0, "model.name"] == "toy" and cfg.loc[0, "lam"] == 1e-4
    assert out.configs["r1"]["format_version"] == 1
    assert out.index.columns.tolist() == ["run", "method", "epoch", "split", "layer", "units", "reservoir", "path"]
    assert out.index[["epoch", "split", "layer", "units"]].values.tolist() == [
        [e, s, layer, u] for e in (1, 2) for s, layer, u in (("train", "a", 3), ("train", "b", 2), ("eval", "a", 3))
    ]


def test_sweep_labels_methods_and_fallback(tmp_path):
    make_run(tmp_path / "sweep" / "vanilla", method="vanilla", epochs=(1,))
    make_run(tmp_path / "sweep" / "seeds" / "bn_s1", config={"lam": 0}, epochs=(1,), seed=1)
    out = load_run(tmp_path / "sweep")
    assert out.runs_list == ["seeds/bn_s1", "vanilla"]
    assert out.methods == {"seeds/bn_s1": "bn_s1", "vanilla": "vanilla"}  # no "method" key: folder name
    assert sorted(out.stats["run"].unique()) == ["seeds/bn_s1", "vanilla"]
    by_run = out.stats.groupby("run", observed=True)["method"].first().to_dict()
    assert by_run == {"seeds/bn_s1": "bn_s1", "vanilla": "vanilla"}
    # the same numbers whether loaded through the sweep or alone
    alone = load_run(tmp_path / "sweep" / "vanilla").stats
    both = out.stats[out.stats.run == "vanilla"].reset_index(drop=True)
    np.testing.assert_array_equal(alone[["count", "mean", "var"]].to_numpy(), both[["count", "mean", "var"]].to_numpy())
    with pytest.raises(RunDirError, match="neither a run directory"):
        load_run(tmp_path / "sweep" / "seeds" / "bn_s1" / "activations")


def test_truncated_npz_names_the_file_and_skip_bad_skips_it(tmp_path):
    rd, _ = make_run(tmp_path / "run")
    bad = rd.activation_path(2)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(RunDirError, match="epoch_0002.npz"):
        load_run(rd.root)
    out = load_run(rd.root, skip_bad=True)
    assert len(out.skipped) == 1 and str(bad) in out.skipped[0]
    assert sorted(out.stats["epoch"].unique()) == [1, 3]
    rd.activation_path(2).write_bytes(b"not a zip")
    with pytest.raises(RunDirError, match="epoch_0002.npz"):
        load_run(rd.root)


def test_inconsistent_files_are_errors_naming_them(tmp_path):
    rd, _ = make_run(tmp_path / "run", epochs=(1, 2))
    shutil.copy(rd.activation_path(1), rd.activation_path(7))  # misplaced: holds epoch 1
    with pytest.raises(RunDirError, match="epoch_0007.npz: holds epoch 1"):
        load_run(rd.root)
    rd.activation_path(7).unlink()
    arrays = rd.read_npz(rd.activation_path(2))
    rd.write_npz(rd.activation_path(2), {**arrays, "format_version": np.int64(RECORDER_FORMAT + 1)})
    with pytest.raises(RunDirError, match="epoch_0002.npz: activation format version"):
        load_run(rd.root)
    del arrays["train/a/sums"]
    rd.write_npz(rd.activation_path(2), arrays)
    with pytest.raises(RunDirError, match=r"epoch_0002.npz: train/a is incomplete \(no sums\)"):
        load_run(rd.root)
    arrays["train/a/sums"] = np.zeros((3, 4))  # one column short: the audit saw "(missing [])"
    rd.write_npz(rd.activation_path(2), arrays)
    with pytest.raises(RunDirError, match=r"epoch_0002.npz: train/a is inconsistent: sums \(3, 4\); expected hist"):
        load_run(rd.root)
    out = load_run(rd.root, skip_bad=True)
    assert sorted(out.stats["epoch"].unique()) == [1] and "epoch_0002.npz" in out.skipped[0]
    good = rd.read_npz(rd.activation_path(1))
    # an audit: reversed edges were a traceback in analysis.plot, which --skip-bad did not skip
    for edges in (good["edges"][::-1], np.where(np.arange(len(good["edges"])) == 3, np.nan, good["edges"])):
        rd.write_npz(rd.activation_path(2), {**good, "edges": edges, "epoch": np.int64(2)})
        with pytest.raises(RunDirError, match="epoch_0002.npz: histogram edges that are not finite and increasing"):
            load_run(rd.root)
        assert "epoch_0002.npz" in load_run(rd.root, skip_bad=True).skipped[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reservoir", lambda a: a[:, :2], r"reservoir has shape \(\d+, 2\), not \(rows, 3\)"),
        ("reservoir_keys", lambda a: a[:-1], "reservoir and reservoir_keys do not match"),
        ("counts", lambda a: np.where(a == a.max(), np.nan, a.astype(np.float64)), "counts that are not integers"),
        ("hist", lambda a: a.astype(np.float32), "counts that are not integers"),
    ],
)
def test_damaged_fields_of_the_right_width_are_errors_naming_them(tmp_path, field, value, message):
    # before: a 2-column reservoir of a 3-unit layer gave SW1 rows over 2 units marked passed; float counts with
    # NaN were cast to garbage integers with only a numpy warning
    rd, _ = make_run(tmp_path / "run", epochs=(2,))  # a reservoir epoch
    arrays = rd.read_npz(rd.activation_path(2))
    key = f"train/a/{field}"  # layer a has 3 units
    rd.write_npz(rd.activation_path(2), {**arrays, key: value(arrays[key])})
    with pytest.raises(RunDirError, match="epoch_0002.npz: train/a.*" + message):
        load_run(rd.root)


def test_histograms_and_reservoirs_are_checked_by_their_headers_and_read_on_demand(tmp_path, monkeypatch):
    # before: load_run decompressed every member of every file and kept all histograms alive (at 200 epochs x
    # 10 layers, half the load time and ~300 MB it never used); the stats frame needs counts, sums, min/max only
    rd, data = make_run(tmp_path / "run", epochs=(1, 2))
    read = []
    original = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or original(self, key))
    out = load_run(rd.root)
    assert read and not [k for k in read if k.rsplit("/", 1)[-1] in ("hist", "reservoir", "reservoir_keys")]
    assert out.index["reservoir"].tolist() == [0, 0, 0, 5, 5, 5]  # rows counted from the headers (epoch 2 keeps 5)
    hist = out.histogram("run", "train", 2, "a")  # read now
    assert hist.counts.shape == (3, 40) and hist.counts.sum() + hist.under.sum() + hist.over.sum() == 3 * 30 - 1
    assert out.reservoir("run", "eval", 2, "a").shape == (5, 3)
    assert np.isin(out.reservoir("run", "eval", 2, "a"), data[2, "eval", "a"].numpy()).all()


def test_damage_inside_a_large_histogram_is_skipped_with_skip_bad_and_named_when_read(tmp_path):
    # a review: load_run reads only headers; a member over zip's 4 kB read size then kept its damage unseen, and
    # skip_bad (--skip-bad of plot and bounds) let the file through to fail later: now it reads them through
    rd = RunDir(tmp_path / "run")
    rd.write_config({"method": "per"})
    taps = nn.ModuleDict({"wide": Tap()})
    rec = ActivationRecorder(taps, list(taps))
    for epoch in (1, 2):
        rec.start_epoch(epoch)
        taps["wide"](torch.randn(500, 400, generator=gen(epoch)) * 3)
        rec.save(rd, epoch)
    path = rd.activation_path(2)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("train/wide/hist.npy")
    assert info.compress_size > 3 * 4096  # the header's read leaves most of the member unread
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF  # inside the deflate data
    path.write_bytes(bytes(raw))
    out = load_run(rd.root, skip_bad=True)
    assert sorted(out.stats["epoch"].unique()) == [1] and len(out.skipped) == 1 and "epoch_0002.npz" in out.skipped[0]
    data = load_run(rd.root)  # headers alone: the damage shows when the histogram is read, naming the file
    assert sorted(data.stats["epoch"].unique()) == [1, 2]
    with pytest.raises(RunDirError, match="epoch_0002.npz: unreadable npz .* the file is damaged"):
        data.histogram("run", "train", 2, "wide")
    assert data.histogram("run", "train", 1, "wide").counts.sum() > 0


def test_bad_metrics_and_config(tmp_path):
    rd, _ = make_run(tmp_path / "sweep" / "a", epochs=(1,))
    rd_b, _ = make_run(tmp_path / "sweep" / "b", epochs=(1,))
    rd.metrics_path.write_text('{"epoch": 1}\n{"epoch": 2, "loss"\n')
    with pytest.raises(RunDirError, match="metrics.jsonl, line 2"):
        load_run(tmp_path / "sweep")
    rd_b.config_path.write_text("{broken")
    out = load_run(tmp_path / "sweep", skip_bad=True)
    assert len(out.skipped) == 2
    assert "metrics.jsonl" in out.skipped[0] and "config.json" in out.skipped[1]
    assert out.runs_list == ["a"] and set(out.stats["run"]) == {"a"}
    assert list(out.metrics["epoch"]) == [1]  # only the bad line is left out
    assert load_run(tmp_path / "sweep" / "a", metrics=False).metrics.empty  # not read: no error


def test_a_run_without_activations_gives_empty_typed_frames(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_config({"method": "vanilla"})
    out = load_run(rd.root)
    assert out.stats.empty and list(out.stats.columns) == list(STATS_COLUMNS)
    assert out.metrics.empty and out.index.empty and out.config["method"].tolist() == ["vanilla"]


def test_a_file_is_named_as_a_file_and_its_folder_suggested(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_config({"method": "vanilla"})
    with pytest.raises(RunDirError) as err:
        load_run(rd.config_path)
    assert (
        str(err.value)
        == f"{rd.config_path} is a file, not a run directory: give the run directory it belongs to, {rd.root}"
    )
    rd.write_npz(rd.activation_path(1), {"x": np.zeros(1)})
    with pytest.raises(RunDirError, match=f"belongs to, {rd.root}$"):
        load_run(rd.activation_path(1))  # two levels down
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    with pytest.raises(RunDirError) as err:  # before: "give its folder" tmp_path, which is no run directory
        load_run(stray)
    assert str(err.value) == f"{stray} is a file, not a run directory: give a run directory or a sweep of them"


def test_stats_of_200_epochs_load_in_seconds(tmp_path):
    """200 epochs x 10 layers x 300 units (train split): 600k rows, about 1 s on an idle 2-core machine."""
    rd = RunDir(tmp_path / "big")
    rd.write_config({"method": "per"})
    taps = nn.ModuleDict({f"layer{i}": Tap() for i in range(1, 11)})
    rec = ActivationRecorder(taps, list(taps))
    rec.start_epoch(1)
    for i, tap in enumerate(taps.values()):
        tap(torch.randn(64, 300, generator=gen(i)) * 2)
    arrays = rec.snapshot()
    for epoch in range(1, 201):
        rd.write_npz(rd.activation_path(epoch), {**arrays, "epoch": np.int64(epoch)})
    t0 = time.perf_counter()
    for epoch in range(1, 201):
        rd.read_npz(rd.activation_path(epoch))
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_run(rd.root)
    t2 = time.perf_counter()
    assert len(out.stats) == 200 * 10 * 300 and out.stats["count"].unique().tolist() == [64]
    # the floor is reading the files; the frames may add little on top (robust to a busy machine)
    assert t2 - t1 < 2 * (t1 - t0) + 2.0, f"load {t2 - t1:.2f} s, reading alone {t1 - t0:.2f} s"
