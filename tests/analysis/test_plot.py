"""Figures from run directories (analysis.plot): numbers, panels, colours and the command line."""

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex, to_rgb
from torch import nn

import analysis.figdir
import analysis.plot
import analysis.plotdata
from analysis.io import SKIP_BAD_HINT, load_run
from analysis.plot import (
    PlotError,
    figure2,
    main,
    metrics_curves,
    ridgeline,
    sw1_curves,
    sw1_table,
    unit_evolution,
)
from analysis.quantiles import QUANTILES, hist_quantiles
from analysis.recorder import ActivationRecorder
from analysis.style import method_color
from analysis.tables import layer_bounds
from per_core.rundir import RunDir

matplotlib.use("Agg")
LAYERS = ("layer1", "layer2", "layer3")
EDGES = np.linspace(-10, 10, 41)  # the recorder's defaults: 40 bins of width 0.5


def known_data(seed, n=3000, scale=1.0):
    """(n, 3) float32: a normal, a skewed (exponential) and a bimodal unit."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(0.5, 1.5, n),
            rng.exponential(1.0, n) - 1.0,
            np.where(rng.random(n) < 0.5, -2.0, 2.0) + 0.3 * rng.normal(size=n),
        ]
    )
    return (scale * X).astype(np.float32)


def fake_run(
    root, method, data_per_epoch, *, reservoir=True, metrics=True, lam=None, bins=40, splits=("train", "eval")
):
    """A run dir whose layers recorded exactly the given {layer: (n, units)} arrays per epoch, in both splits."""
    rd = RunDir(root)
    lams = {} if lam is None else {"lam": lam}
    rd.write_config({"method": method, "epochs": len(data_per_epoch), "record_every": 1, **lams})
    mods = {name: nn.Identity() for name in data_per_epoch[0]}
    rec = ActivationRecorder(
        nn.ModuleDict(mods), mods, reservoir=256, reservoir_every=1, reservoir_splits=splits, bins=bins
    )
    for epoch, arrays in enumerate(data_per_epoch, start=1):
        rec.start_epoch(epoch, reservoir=reservoir)
        for name, X in arrays.items():
            mods[name].train()
            mods[name](torch.as_tensor(X))
        rec.end_epoch()
        with rec.eval_pass():
            for name, X in arrays.items():
                mods[name].eval()
                mods[name](torch.as_tensor(X))
        rec.save(rd, epoch)
    if metrics:
        rd.write_metrics(
            [
                {"epoch": e, "val_error": 10.0 / e, "train_loss": 1.0 / e, "per_penalty": 1.0}
                for e in range(1, len(data_per_epoch) + 1)
            ]
        )
    return rd


def epochs_of(seed, scales):
    return [
        {layer: known_data(seed + 10 * e + i, 600, s) for i, layer in enumerate(LAYERS)} for e, s in enumerate(scales)
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """vanilla (3 epochs), bn (2 seeds) and per whose activations shrink to a near point mass (collapse)."""
    root = tmp_path_factory.mktemp("sweep")
    fake_run(root / "vanilla", "vanilla", epochs_of(0, [1.0, 1.5, 2.5]))
    fake_run(root / "bn" / "seed0", "bn", epochs_of(1, [1.0, 1.0, 1.0]))
    fake_run(root / "bn" / "seed1", "bn", epochs_of(2, [1.0, 1.0, 1.0]))
    fake_run(root / "per", "per", epochs_of(3, [1.0, 0.3, 0.02]))
    return root


@pytest.fixture(scope="module")
def data(sweep):
    return load_run(sweep)


def has_data(ax):
    """The axes draws something: a line with points or a filled collection with vertices."""
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 0]
    polys = [c for c in ax.collections if any(len(p.vertices) for p in c.get_paths())]
    return bool(lines or polys)


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [0, 1, 2])
def test_hist_quantiles_match_numpy_within_the_bin_width(unit):
    x = known_data(7, 5000)[:, unit].astype(np.float64)
    counts = np.histogram(x, EDGES)[0]
    est = hist_quantiles(counts, EDGES, data_min=x.min(), data_max=x.max())
    assert np.all(np.abs(est - np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])) <= 0.5)


def test_hist_quantiles_place_overflow_between_edge_and_max():
    x = np.random.default_rng(0).exponential(6.0, 4000)  # about 19% above 10
    inside = np.histogram(x, EDGES)[0]
    over = int((x > 10).sum())
    est = hist_quantiles(inside, EDGES, [0.5, 0.95], over=over, data_min=x.min(), data_max=x.max())
    exact = np.quantile(x, [0.5, 0.95])
    assert abs(est[0] - exact[0]) <= 0.5
    assert 10 <= est[1] <= x.max() and abs(est[1] - exact[1]) <= x.max() - 10  # within the overflow "bin"
    with pytest.raises(ValueError, match="data_max"):
        hist_quantiles(inside, EDGES, over=over)


def test_hist_quantiles_edge_cases_and_batches():
    assert np.isnan(hist_quantiles(np.zeros(40), EDGES)).all()  # empty
    point = np.histogram(np.full(50, 1.3), EDGES)[0]
    assert np.allclose(hist_quantiles(point, EDGES, data_min=1.3, data_max=1.3), 1.3)  # clipped to [min, max]
    rows = np.stack([np.histogram(known_data(s, 800)[:, 0], EDGES)[0] for s in range(4)])  # (epochs, bins)
    batched = hist_quantiles(rows, EDGES)
    assert batched.shape == (4, 5)
    assert np.allclose(batched[2], hist_quantiles(rows[2], EDGES))
    assert np.all(np.diff(batched, axis=1) >= 0)  # quantiles increase with the level
    empty_unit = hist_quantiles(np.zeros(40), EDGES, data_min=np.inf, data_max=-np.inf)  # as the recorder writes it
    assert np.isnan(empty_unit).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=12).filter(any))
def test_hist_quantiles_stay_within_the_bins_that_hold_values(counts):
    # before: q = 0 without data_min read edges[0], however many empty bins lay between it and the data
    edges = np.arange(len(counts) + 1, dtype=np.float64)
    full = np.flatnonzero(counts)
    est = hist_quantiles(counts, edges, [0.0, 1e-9, 0.5, 1.0])
    assert np.all((edges[full[0]] <= est) & (est <= edges[full[-1] + 1])), (counts, est)


@pytest.mark.parametrize("mu", [0.0, 4.0, -15.0])
def test_hist_quantiles_normal_tails_recover_a_wide_normal_units_quantiles(mu):
    # std 20 against edges at +-10: most values lie in the under/overflow. The even spread read the
    # 5 % quantile of N(0, 20^2) at -77 (true -33); the normal tail with the exact moments is exact
    x = np.random.default_rng(1).normal(mu, 20.0, 200_000)
    kw = dict(under=(x < -10).sum(), over=(x > 10).sum(), data_min=x.min(), data_max=x.max())
    counts = np.histogram(x, EDGES)[0]
    exact = np.quantile(x, QUANTILES)
    est = hist_quantiles(counts, EDGES, **kw, mean=x.mean(), std=x.std())
    assert np.all(np.abs(est - exact) <= 0.5)  # the bin width inside, sampling noise (~0.15) outside
    even = hist_quantiles(counts, EDGES, **kw)
    assert np.abs(even - exact).max() > 20  # what the even spread made of it


def test_hist_quantiles_normal_tails_stay_in_their_bin_and_rise_with_the_level():
    x = 8 * np.random.default_rng(2).standard_t(3, 50_000)  # heavy tails: the normal tail is only a model
    kw = dict(under=(x < -10).sum(), over=(x > 10).sum(), data_min=x.min(), data_max=x.max())
    levels = np.linspace(0, 1, 201)
    est = hist_quantiles(np.histogram(x, EDGES)[0], EDGES, levels, **kw, mean=x.mean(), std=x.std())
    assert np.all(np.diff(est) >= 0) and est[0] == x.min() and est[-1] == x.max()
    p_under, p_over = kw["under"] / len(x), kw["over"] / len(x)
    assert np.all(est[levels < p_under] <= -10) and np.all(est[levels > 1 - p_over] >= 10)
    exact = np.quantile(x, [0.05, 0.95])
    assert np.all(
        np.abs(hist_quantiles(np.histogram(x, EDGES)[0], EDGES, [0.05, 0.95], **kw, mean=0, std=x.std()) - exact)
        < 0.1 * np.abs(exact)
    )
    with pytest.raises(ValueError, match="give both or neither"):
        hist_quantiles(np.histogram(x, EDGES)[0], EDGES, **kw, mean=0.0)
    # no usable spread (zero, NaN): the even spread, as without moments
    for std in (0.0, np.nan):
        assert np.array_equal(
            hist_quantiles(np.histogram(x, EDGES)[0], EDGES, **kw, mean=0.0, std=std),
            hist_quantiles(np.histogram(x, EDGES)[0], EDGES, **kw),
        )


@pytest.mark.parametrize(
    ("counts", "edges", "kw", "match"),
    [
        ([1, 1, 2], [3.0, 2.0, 1.0, 0.0], {}, "strictly increasing"),
        ([1, 1, 2], [0.0, np.nan, 2.0, 3.0], {}, "edges must be finite"),
        ([1, -5, 2], [0.0, 1.0, 2.0, 3.0], {}, "counts must be finite non-negative"),
        ([1, np.nan, 2], [0.0, 1.0, 2.0, 3.0], {}, "counts must be finite non-negative"),
        ([1, 1, 2], [0.0, 1.0, 2.0, 3.0], {"q": [np.nan]}, r"levels must lie in \[0, 1\]"),
        ([1, 1, 2], [0.0, 1.0, 2.0, 3.0], {"under": -1, "data_min": -1.0}, "under must be finite"),
        ([1, 1, 2], [0.0, 1.0, 2.0, 3.0], {"under": 1, "data_min": np.nan, "data_max": 3.0}, "data_min/data_max"),
        ([1, 1, 2], [0.0, 1.0, 2.0, 3.0], {"data_min": -np.inf}, "data_min/data_max must be finite"),
    ],
)
def test_hist_quantiles_reject_what_is_not_a_histogram(counts, edges, kw, match):
    # before: decreasing edges gave zeros and NaN counts or edges gave NaN quantiles, without an error
    kw = dict(kw)
    q = kw.pop("q", QUANTILES)
    with pytest.raises(ValueError, match=match):
        hist_quantiles(counts, edges, q, **kw)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-12, 12, allow_nan=False), min_size=1, max_size=200),
    st.floats(0, 1),
)
def test_hist_quantile_lies_in_the_bin_of_the_sample_quantile(values, level):
    x = np.array(values)
    counts = np.histogram(x, EDGES)[0]
    under, over = int((x < -10).sum()), int((x > 10).sum())
    est = hist_quantiles(counts, EDGES, [level], under=under, over=over, data_min=x.min(), data_max=x.max())[0]
    width = max(0.5, x.max() - 10, -10 - x.min())  # bin width, or the width of the under/overflow "bin"
    assert x.min() <= est <= x.max()
    # x_(ceil(qN)) (numpy's "inverted_cdf") lies in the bin the estimate interpolates in
    assert abs(est - np.quantile(x, level, method="inverted_cdf")) <= width + 1e-9


def test_recorded_quantile_bands_match_the_data_fed(tmp_path):
    X = known_data(11, 4000)
    fake_run(tmp_path / "r", "vanilla", [{"layer1": X}, {"layer1": 2 * X}])
    frame = unit_evolution(load_run(tmp_path / "r"), "r", "layer1", 2)
    for epoch, Y in ((1, X), (2, 2 * X)):
        row = frame[frame["epoch"] == epoch].iloc[0]
        est = row[["q0.05", "q0.25", "q0.5", "q0.75", "q0.95"]].to_numpy(float)
        assert np.all(np.abs(est - np.quantile(Y[:, 2].astype(np.float64), [0.05, 0.25, 0.5, 0.75, 0.95])) <= 0.5)
        assert row["resolution"] == 0.5
        assert np.isclose(row["mean"], Y[:, 2].astype(np.float64).mean())
        assert np.isclose(row["var"], Y[:, 2].astype(np.float64).var(), rtol=1e-6)


def test_figure2_and_unit_evolution_read_wide_units_beyond_the_range_by_their_moments(tmp_path):
    wide = np.random.default_rng(5).normal(0.0, 20.0, (20_000, 1)).astype(np.float32)  # 62 % outside +-10
    fake_run(tmp_path / "r", "vanilla", [{"layer1": wide}], reservoir=False)
    data = load_run(tmp_path / "r")
    row = unit_evolution(data, "r", "layer1", 0).iloc[0]
    exact = np.quantile(wide[:, 0].astype(np.float64), [0.05, 0.95])
    assert np.all(np.abs(row[["q0.05", "q0.95"]].to_numpy(float) - exact) < 1.0)  # before: -76 and 75
    assert row["outside"] > 0.6
    fig = figure2(data, split="train")
    band_ax = fig.axes[0]
    assert sorted(ln.get_ydata()[0] for ln in band_ax.get_lines() if ln.get_linestyle() == ":") == [-10.0, 10.0]
    assert "follow a normal tail with the unit's exact mean and variance" in " ".join(t.get_text() for t in fig.texts)
    narrow = np.random.default_rng(5).normal(0.0, 1.0, (2_000, 1)).astype(np.float32)
    fake_run(tmp_path / "n", "vanilla", [{"layer1": narrow}], reservoir=False)
    fig = figure2(load_run(tmp_path / "n"), split="train")
    assert "normal tail" not in " ".join(t.get_text() for t in fig.texts)
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]


def test_sw1_table_matches_layer_bounds_and_flags_the_collapse(sweep, data):
    ours = sw1_table(data, "train")
    assert len(ours) == 4 * 3 * 3  # runs x epochs x layers
    ours = ours.set_index(["run", "epoch", "layer"]).sort_index()
    assert ours.loc[("per", 3), "collapsed"].all() and not ours.loc["vanilla", "collapsed"].any()
    per = load_run(sweep / "per")  # layer_bounds also runs exact OT: keep it to one run
    ref = layer_bounds(per)
    ref = ref[ref["split"] == "eval"].set_index(["epoch", "layer"]).sort_index()
    mine = sw1_table(per).set_index(["epoch", "layer"]).sort_index()
    for col in ("sw1", "lper", "projected_std"):
        assert np.allclose(mine[col], ref[col], rtol=1e-10), col
    assert (mine["collapsed"] == ref["collapsed"]).all()


# --- figures ------------------------------------------------------------------------------------


def test_figure2_panels_and_artists(data):
    fig = figure2(data, layers=["layer1", "layer3"], units=[0, 2])
    axes = fig.get_axes()
    assert len(axes) == 4 * (3 + 2)  # (layer, unit) rows x (vanilla, bn, per, mean, variance)
    assert all(has_data(ax) for ax in axes)
    band = axes[0]  # vanilla, layer1 unit 0: 5-95% and 25-75% bands and the median
    assert sum(isinstance(c, PolyCollection) for c in band.collections) == 2
    assert "eval split" in fig._suptitle.get_text() and "layer1 unit 0" in fig._suptitle.get_text()
    assert axes[4].get_ylim()[1] == pytest.approx(5 * 1.08)  # variance axis clipped at 5


def test_figure2_defaults_marks_clipped_variance_and_shows_every_seed(tmp_path):
    big = [{"layer1": 4 * known_data(0, 400)}, {"layer1": known_data(1, 400)}]
    fake_run(tmp_path / "a", "vanilla", big)
    fake_run(tmp_path / "b", "vanilla", big)
    d = load_run(tmp_path)
    fig = figure2(d, split="train")  # one layer: the default takes it
    axes = fig.get_axes()
    assert len(axes) == 1 + 2
    var_lines = [ln for ln in axes[2].get_lines() if ln.get_marker() == "^"]
    assert var_lines and np.allclose(var_lines[0].get_ydata(), 5.0)
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "vanilla (a)" in labels and "vanilla (b)" in labels and "variance > 5 (clipped)" in labels


def test_single_recorded_epoch(tmp_path):
    fake_run(tmp_path / "one", "per", [{"layer1": known_data(0, 500)}])
    d = load_run(tmp_path / "one")
    for fig, n_axes in (
        (figure2(d), 3),
        (sw1_curves(d), 1),
        (ridgeline(d, "layer1", 1), 1),
        (metrics_curves(d), 3),
    ):
        assert len(fig.get_axes()) == n_axes and all(has_data(ax) for ax in fig.get_axes())


def test_sw1_curves_panels_bound_dashed_and_collapse_marked(data):
    fig = sw1_curves(data)
    axes = fig.get_axes()
    assert len(axes) == len(LAYERS) and all(has_data(ax) for ax in axes)
    styles = {ln.get_linestyle() for ln in axes[0].get_lines() if len(ln.get_xdata()) == 3}
    assert {"-", "--"} <= styles  # SW1 solid, L_per dashed
    collapsed = [ln for ln in axes[0].get_lines() if ln.get_marker() == "X"]
    assert collapsed and to_hex(collapsed[0].get_color()) == method_color("per").lower()
    text = fig._suptitle.get_text() + " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "point mass" in text and "not a distance" in text and "L_per distance" not in text
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "finite-sample bias of about 1.29/sqrt(m)" in notes  # a Gaussian sample's own SW1 (test_distances)


def test_ridgeline_and_metrics_panels(data):
    fig = ridgeline(data, "layer2", 1)
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert titles[1:] == ["bn\nrun bn/seed0", "per"]  # one panel per method (first bn seed), titled with its run
    assert titles[0].startswith("vanilla (") and "outside the histogram range" in titles[0]  # 2.5 x exponential
    assert all(has_data(ax) for ax in fig.get_axes())
    fig = metrics_curves(data)
    assert len(fig.get_axes()) == 3 and all(has_data(ax) for ax in fig.get_axes())
    assert len(fig.get_axes()[0].get_lines()) == 4  # every run, both bn seeds


def test_same_method_same_colour_in_every_figure(data):
    def colours(ax, label):
        return {to_hex(ln.get_color()) for ln in ax.get_lines() if ln.get_label() == label}

    want = {m: method_color(m).lower() for m in ("vanilla", "bn", "per")}
    f2, sw, mc = figure2(data), sw1_curves(data), metrics_curves(data)
    for m, hex_ in want.items():
        label = m if m != "bn" else "bn (bn/seed0)"
        assert colours(f2.get_axes()[-2], label) == {hex_}  # mean panel
        assert colours(sw.get_axes()[0], label) == {hex_}
        assert colours(mc.get_axes()[0], label) == {hex_}
    bands = {ax.get_title(): ax for ax in f2.get_axes()[:3]}
    assert list(bands) == [
        "(a) vanilla: quantile bands",
        "(b) bn: quantile bands\nrun bn/seed0",
        "(c) per: quantile bands",
    ]
    for (title, ax), hex_ in zip(bands.items(), want.values(), strict=True):
        assert to_hex(ax.collections[0].get_facecolor()[0], keep_alpha=False) == hex_, title
    rl = ridgeline(data, "layer1", 0)
    assert [to_hex(ax.get_lines()[0].get_color()) for ax in rl.get_axes()] == list(want.values())


def test_a_lambda_sweep_reads_as_one_hue_from_weak_to_strong(tmp_path):
    for lam, seed in ((0.01, 0), (0.01, 1), (0.1, 0), (1.0, 0)):
        fake_run(tmp_path / f"per-lam{lam:g}" / f"seed{seed}", "per", epochs_of(seed, [1.0, 0.5]), lam=lam)
    fake_run(tmp_path / "vanilla", "vanilla", epochs_of(5, [1.0, 1.0]), lam=0.01)
    ax = sw1_curves(load_run(tmp_path)).get_axes()[0]
    solid = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 2}
    colour = {label: to_hex(ln.get_color()) for label, ln in solid.items()}
    weak, weak2 = colour["per (per-lam0.01/seed0)"], colour["per (per-lam0.01/seed1)"]
    mid, strong = colour["per (per-lam0.1/seed0)"], colour["per (per-lam1/seed0)"]
    assert strong == method_color("per").lower() and weak == weak2 and len({weak, mid, strong}) == 3
    assert sum(to_rgb(weak)) > sum(to_rgb(mid)) > sum(to_rgb(strong))  # lighter for a weaker lambda
    assert solid["per (per-lam0.01/seed1)"].get_alpha() < 1 == solid["per (per-lam0.01/seed0)"].get_alpha()
    assert colour["vanilla"] == method_color("vanilla").lower()  # one lambda: the method's own colour


# --- command line -------------------------------------------------------------------------------


def test_cli_writes_the_figures_and_prints_their_paths(sweep, capsys):
    assert main([str(sweep), "--layers", "layer2", "--units", "0", "1"]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.rsplit("/", 1)[1] for p in printed)
    assert names == sorted(
        ["figure2.png", "ridgeline_layer2_unit0.png", "ridgeline_layer2_unit1.png", "sw1_curves.png", "metrics.png"]
    )
    assert all((sweep / "figures" / n).stat().st_size > 1000 for n in names)
    assert not list((sweep / "figures").glob(".*.tmp"))  # atomic writes leave no temp file


def test_cli_single_run_pdf_and_several_paths(sweep, tmp_path, capsys):
    assert main([str(sweep / "per"), "--format", "pdf", "--split", "train"]) == 0
    out = capsys.readouterr().out.split()
    assert all(p.startswith(str(sweep / "per" / "figures")) and p.endswith(".pdf") for p in out)
    assert (sweep / "per" / "figures" / "figure2.pdf").read_bytes().startswith(b"%PDF")
    assert main([str(sweep / "vanilla"), str(sweep / "bn"), "--out", str(tmp_path / "f")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and all(p.startswith(str(tmp_path / "f")) for p in printed)  # default layer: layer3


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("empty", [], "neither a run directory nor a sweep"),
        ("no_activations", [], "no activations recorded in {root}: train with --record all"),
        ("run", ["--layers", "layer9"], "unknown layer 'layer9' in split eval; layers: layer1"),
        ("run", ["--units", "7"], "unit 7 does not exist in layer layer1: it has units 0..2"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, make, args, message):
    root = tmp_path / "x"
    root.mkdir()
    if make == "no_activations":
        RunDir(root).write_config({"method": "per"})
    elif make == "run":
        fake_run(root, "per", [{"layer1": known_data(0, 200)}])
    assert main([str(root), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message.format(root=root) in err


def test_runs_without_activations_still_get_their_metrics_figure_and_a_run_named_twice_is_one(sweep, tmp_path, capsys):
    # before: "error: no activations recorded in ...: train with --record" and no figure at all (every
    # --no-record sweep); and the same run named twice sent its figures to the parent folder
    run = RunDir(tmp_path / "norec")
    run.write_config({"method": "per", "lam": 0.01})
    run.write_metrics([{"epoch": e, "val_error": 10.0 / e, "train_loss": 1.0 / e} for e in (1, 2, 3)])
    assert main([str(run.root)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(run.root / "figures" / "metrics.png")]
    assert captured.err.startswith(f"note: no activations recorded in {run.root}: train with --record all (or a")
    assert captured.err.endswith("e.g. --record layer3); only the metrics are drawn\n")
    assert (run.root / "figures" / "metrics.png").stat().st_size > 1000
    assert main([str(sweep / "per"), str(sweep / "per" / "."), "--layers", "layer2"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(p.startswith(str(sweep / "per" / "figures")) for p in printed)


def test_runs_with_different_layers_draw_what_they_have_in_common(tmp_path, capsys):
    import matplotlib.pyplot as plt

    fake_run(tmp_path / "a", "bn", [{"layer1": known_data(0, 200)}] * 2)  # like --record layer1
    fake_run(tmp_path / "b", "per", epochs_of(3, [1.0, 0.5]))  # layer1..layer3
    paths = [str(tmp_path / "b"), str(tmp_path / "a")]
    assert main([*paths, "--out", str(tmp_path / "f")]) == 0
    captured = capsys.readouterr()
    names = [p.rsplit("/", 1)[1] for p in captured.out.split()]
    assert names == ["figure2.png", "ridgeline_layer1_unit0.png", "sw1_curves.png", "metrics.png"]  # layer1: shared
    assert captured.err == (
        "note: run a did not record layer2, layer3 in split eval (it recorded layer1): "
        "left out of those layers' panels\n"
    )
    data = load_run(tmp_path)
    fig = figure2(data, ["layer3"])  # a layer only per recorded: bn's panel says so, per's is drawn
    bn, per = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in bn.texts] == ["layer3 not recorded"] and not has_data(bn) and has_data(per)
    assert bn.get_title() == "(a) bn: quantile bands"
    smoke = RunDir(tmp_path / "a")
    smoke.write_config({**smoke.read_config(), "smoke": True})
    smoke_fig = figure2(load_run(tmp_path), ["layer3"])  # the method's title says smoke, as a drawn run's does
    assert smoke_fig.axes[0].get_title() == "(a) bn (smoke): quantile bands"
    plt.close(smoke_fig)
    rl = ridgeline(data, "layer3")
    assert [ax.get_title() for ax in rl.get_axes()] == ["per"]  # no panel for bn
    plt.close(fig)
    plt.close(rl)
    with pytest.raises(PlotError, match="run a did not record layer layer3 in split eval"):
        unit_evolution(data, "a", "layer3")


def test_runs_without_a_common_layer_error_names_each_runs_layers(tmp_path, capsys):
    fake_run(tmp_path / "cnn", "per", [{"conv1": known_data(0, 200), "conv2": known_data(1, 200)}])
    fake_run(tmp_path / "lstm", "vanilla", [{"lstm1": known_data(2, 200)}])
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: the runs recorded no layer in common in split eval (cnn: conv1, conv2; lstm: lstm1): "
        "choose layers with --layers or plot the runs separately\n"
    )
    assert not (tmp_path / "figures").exists()
    assert main([str(tmp_path), "--layers", "lstm1"]) == 0  # drawn from the run that has it
    assert "note: run cnn did not record lstm1 in split eval" in capsys.readouterr().err


def test_cli_skip_bad_goes_on_and_names_the_skipped_file(tmp_path, capsys):
    rd = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0, 1.0]))
    bad = rd.activation_path(2)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    assert main([str(rd.root)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "damaged" in err and err.count("\n") == 1
    assert err.endswith(f"; {SKIP_BAD_HINT}\n")
    assert main([str(rd.root), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"skipped: {bad}" in captured.err
    assert len(captured.out.split()) == 4  # figure2, ridgeline, sw1 curves, metrics
    assert "note: run r has no activations of epoch 2 in split eval (its config records every 1 epochs" in captured.err


def test_cli_damage_inside_a_histogram_stops_a_figure_and_points_to_skip_bad(tmp_path, capsys):
    import zipfile

    rng = np.random.default_rng(0)
    epochs = [{"wide": rng.normal(size=(600, 400)).astype(np.float32)} for _ in (1, 2)]
    rd = fake_run(tmp_path / "r", "per", epochs, bins=160)
    path = rd.activation_path(2)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("eval/wide/hist.npy")
    assert info.compress_size > 3 * 4096  # loading reads the header alone: the damage is found by a figure
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert main([str(rd.root)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and err.endswith(f"; {SKIP_BAD_HINT}\n")
    assert main([str(rd.root), "--skip-bad"]) == 0
    assert f"skipped: {path}" in capsys.readouterr().err


def test_cli_points_to_skip_bad_only_for_what_it_leaves_out(tmp_path, capsys):
    # the hint once keyed on the word "damaged", which a folder's name can hold
    rd = fake_run(tmp_path / "damaged_copy" / "r", "per", epochs_of(0, [1.0, 1.0]))
    assert main([str(tmp_path / "damaged_copy" / "missing")]) == 2
    assert "--skip-bad" not in capsys.readouterr().err
    with open(rd.metrics_path, "ab") as f:
        f.write(b'{"epoch": 3, "val_error": 1.0}\n\xff\xfe\n')  # bytes that are not UTF-8: a damaged line
    assert main([str(rd.root)]) == 2
    err = capsys.readouterr().err
    assert f"{rd.metrics_path}, line 4: not valid JSON" in err and err.endswith(f"; {SKIP_BAD_HINT}\n")
    assert main([str(rd.root), "--skip-bad"]) == 0
    assert f"skipped: {rd.metrics_path}, line 4" in capsys.readouterr().err


def test_cli_notes_an_epoch_whose_file_is_missing(tmp_path, capsys):
    rd = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0, 1.0, 1.0]))
    assert main([str(rd.root), "--layers", "layer1"]) == 0
    assert "has no activations of epoch" not in capsys.readouterr().err
    rd.activation_path(2).unlink()
    rd.activation_path(3).unlink()
    assert main([str(rd.root), "--layers", "layer1"]) == 0
    err = capsys.readouterr().err
    assert "note: run r has no activations of epoch 2, 3 in split eval" in err and "skipped:" not in err
    rd.activation_path(4).unlink()  # the last epochs gone: nothing to join, nothing noted
    assert main([str(rd.root), "--layers", "layer1"]) == 0
    assert "has no activations of epoch" not in capsys.readouterr().err


def test_cli_without_reservoirs_notes_the_missing_sw1_figure(tmp_path, capsys):
    fake_run(tmp_path / "r", "vanilla", epochs_of(0, [1.0, 2.0]), reservoir=False)
    assert main([str(tmp_path / "r"), "--layers", "layer1,layer2"]) == 0
    captured = capsys.readouterr()
    names = [p.rsplit("/", 1)[1] for p in captured.out.split()]
    assert names == ["figure2.png", "ridgeline_layer1_unit0.png", "ridgeline_layer2_unit0.png", "metrics.png"]
    assert "note: sw1_curves not drawn: no reservoir rows recorded in" in captured.err  # in no split: what to do


def test_python_dash_m_is_headless_and_prints_no_traceback(tmp_path):
    cmd = [sys.executable, "-m", "analysis.plot", str(tmp_path / "missing")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'missing'}: no such directory\n"
    assert proc.stdout == ""


def test_one_layer_name_and_one_unit_index_are_taken_as_such(tmp_path):
    import matplotlib.pyplot as plt

    fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0]))
    data = load_run(tmp_path / "r")
    fig = figure2(data, layers="layer1", units=0)  # before: layers 'l', 'a', 'y', ... and "int is not iterable"
    assert len(fig.axes) == 3  # one layer x (band, mean, variance)
    plt.close(fig)
    for bad in (1.7, [1.7], True):
        with pytest.raises(PlotError, match="units must be integers"):
            figure2(data, layers=["layer1"], units=bad)  # before: 1.7 silently drew unit 1
    with pytest.raises(PlotError, match="units must be integers"):
        ridgeline(data, "layer1", unit=1.7)


def test_sw1_curves_of_a_given_table_shows_its_slices_and_refuses_another_split(tmp_path):
    import matplotlib.pyplot as plt

    fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0]))
    data = load_run(tmp_path / "r")
    table = sw1_table(data, "train", n_projections=16)
    assert (table["slices"] == 16).all()
    with pytest.raises(PlotError, match="the table given is of split train, not 'eval'"):
        sw1_curves(data, "eval", table=table)  # before: the train split was drawn, titled as asked
    fig = sw1_curves(data, table=table)
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "16 slices" in texts and "256 slices" not in texts
    plt.close(fig)


# --- what the reviewer of the figures found -------------------------------------------------------


def texts_of(fig):
    """Every text of a figure: suptitle, axes titles, legends and notes."""
    legends = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    return " ".join([fig._suptitle.get_text() if fig._suptitle else "", *legends, *(t.get_text() for t in fig.texts)])


def nonfinite_marks(ax):
    """Epochs marked as holding NaN/inf values (red diamonds on the x axis)."""
    return sorted(
        x
        for ln in ax.get_lines()
        if ln.get_marker() == "D" and to_hex(ln.get_markerfacecolor()) == "#ff0000"
        for x in ln.get_xdata()
    )


def test_a_one_epoch_run_keeps_the_shared_epoch_range_of_figure2(tmp_path):
    # before: _bands set xlim(x - 1, x + 1) for the one-epoch run and, shared, every panel showed epochs 0-2
    fake_run(tmp_path / "long", "vanilla", epochs_of(0, [1.0, 1.0, 1.0, 1.0, 1.0]))
    fake_run(tmp_path / "short", "per", epochs_of(1, [1.0]))
    fig = figure2(load_run(tmp_path), ["layer1"])
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert lo <= 1 and hi >= 5, (ax.get_title(), lo, hi)
    short = load_run(tmp_path / "short")
    for fig in (figure2(short, ["layer1"]), sw1_curves(short)):  # one epoch alone: visible, whole-epoch ticks
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert lo < 1 < hi and ticks and all(float(t).is_integer() for t in ticks), (lo, hi, ticks)


def nan_run(root):
    """layer1 recorded NaN at epoch 2 (some rows) and epoch 3 (all); train_loss NaN at 3, per_penalty inf at 2."""
    epochs = epochs_of(0, [1.0, 1.0, 1.0, 1.0])
    epochs[1]["layer1"][:10] = np.nan
    epochs[2]["layer1"][:] = np.nan
    rd = fake_run(root, "per", epochs, metrics=False)
    rows = [{"epoch": e, "val_error": 10.0, "train_loss": 1.0, "per_penalty": 0.9} for e in (1, 2, 3, 4)]
    rows[2]["train_loss"], rows[1]["per_penalty"] = float("nan"), float("inf")
    rd.write_metrics(rows)
    return rd


def test_nonfinite_activations_and_metrics_are_noted_and_marked(tmp_path, capsys):
    # before: the NaN epochs were silently left out (bands and SW1 simply stopped) and no note said so
    rd = nan_run(tmp_path / "r")
    assert main([str(rd.root), "--layers", "layer1", "layer2"]) == 0
    err = capsys.readouterr().err
    assert (
        "note: run r, layer layer1: NaN/inf values at epochs 2-3 in split eval (1830 NaN values), left out of "
        "the histograms, moments and reservoirs" in err
    )  # 10 x 3 units at epoch 2, 600 x 3 at epoch 3 (the eval split records the arrays once)
    data = load_run(rd.root)
    fig = figure2(data, ["layer1", "layer2"])
    band1, mean1, var1, band2 = fig.axes[0], fig.axes[1], fig.axes[2], fig.axes[3]
    assert nonfinite_marks(band1) == nonfinite_marks(mean1) == nonfinite_marks(var1) == [2, 3]
    assert nonfinite_marks(band2) == []
    assert "NaN/inf recorded in the unit that epoch" in texts_of(fig) and "epochs 2-3" in texts_of(fig)
    sw = sw1_curves(data)
    assert [nonfinite_marks(ax) for ax in sw.axes] == [[2, 3], [], []]
    assert "NaN/inf recorded in the layer that epoch" in texts_of(sw)
    # a review: Figure 2 marked a layer's NaN on every unit's panels; only the unit that recorded them is marked
    epochs = epochs_of(0, [1.0, 1.0, 1.0])
    epochs[1]["layer1"][:5, 2] = np.nan
    one = load_run(fake_run(tmp_path / "u", "per", epochs).root)
    fig = figure2(one, ["layer1"], [0, 2])
    assert nonfinite_marks(fig.axes[0]) == [] and nonfinite_marks(fig.axes[3]) == [2]
    mc = metrics_curves(data)
    marks = {ax.get_title(): nonfinite_marks(ax) for ax in mc.axes}
    assert marks == {
        "validation error (%)": [],
        "training loss": [3],
        "PER penalty: L_per (a bound, not a distance)": [2],
    }
    assert "run r logged a non-finite train_loss at epoch 3" in texts_of(mc)


def test_a_lambda_sweep_colours_and_titles_the_bands_and_ridges_by_their_run(tmp_path):
    # before: the bands (first run: lambda 0.01) were drawn in the colour of lambda 1 and titled "per"
    for lam in (0.01, 1.0):
        for seed in (0, 1):
            fake_run(tmp_path / f"per-lam{lam:g}" / f"seed{seed}", "per", epochs_of(seed, [1.0, 0.5]), lam=lam)
    data = load_run(tmp_path)
    fig = figure2(data, ["layer1"])
    band, mean = fig.axes[0], fig.axes[1]
    weak = {to_hex(ln.get_color()) for ln in mean.get_lines() if ln.get_label() == "per (per-lam0.01/seed0)"}
    assert len(weak) == 1 and weak != {method_color("per").lower()}
    assert to_hex(band.collections[0].get_facecolor()[0], keep_alpha=False) in weak
    assert band.get_title() == "(a) per, λ = 0.01: quantile bands\nrun per-lam0.01/seed0"
    assert "lightest (smallest) to the method's full colour (largest): per 0.01, 1" in texts_of(fig)
    rl = ridgeline(data, "layer1")
    assert rl.axes[0].get_title() == "per, λ = 0.01\nrun per-lam0.01/seed0"
    assert {to_hex(ln.get_color()) for ln in rl.axes[0].get_lines() if ln.get_linestyle() == "-"} == weak


def test_sw1_curves_mark_the_bound_apart_from_the_distance_and_say_what_x_means(tmp_path):
    # before: with one reservoir epoch SW1 and L_per were both 'o' points: the bound looked like the distance
    fake_run(tmp_path / "one", "per", epochs_of(0, [0.02]))  # small from the start: x at epoch 1
    fig = sw1_curves(load_run(tmp_path / "one"))
    ax = fig.axes[0]
    sw, lper = (ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1 and ln.get_marker() != "X")
    assert sw.get_marker() == "o" and sw.get_linestyle() == "-"
    assert lper.get_marker() == "s" and lper.get_markerfacecolor() == "white" and lper.get_linestyle() == "--"
    keys = {t.get_text(): h for leg in fig.legends for t, h in zip(leg.get_texts(), leg.legend_handles, strict=True)}
    assert keys["L_per, same slices (bound, not a distance)"].get_marker() == "s"
    assert [ln for ln in ax.get_lines() if ln.get_marker() == "X"]  # collapsed, though never shrunk
    x_key = next(t for t in keys if t.startswith("x: "))
    assert "projected std < 0.5" in x_key and "small from the start" in x_key


def test_cli_removes_only_its_own_stale_figures_and_keeps_a_sweeps_figures_from_a_selection(tmp_path, capsys):
    # before: a call with other layers left ridgeline_layer3_unit0.png behind, and `per bn` (a part of the
    # sweep) overwrote the sweep's figures in its figures/ folder
    sweep = tmp_path / "sweep"
    for method, seed in (("vanilla", 0), ("bn", 1), ("per", 2)):
        fake_run(sweep / method, method, epochs_of(seed, [1.0, 0.5]))
    figures = sweep / "figures"
    assert main([str(sweep), "--layers", "layer3"]) == 0
    (figures / "my_notes.txt").write_text("mine")
    (figures / "ridgeline_layer9_unit0.png").write_bytes(b"made by hand")  # not written by analysis.plot
    assert main([str(sweep), "--layers", "layer1"]) == 0
    err = capsys.readouterr().err
    assert f"note: removed {figures / 'ridgeline_layer3_unit0.png'}: an earlier call wrote it" in err
    names = sorted(p.name for p in figures.iterdir())
    assert names == sorted(
        [analysis.plot.MANIFEST, "figure2.png", "metrics.png", "my_notes.txt", "ridgeline_layer1_unit0.png",
         "ridgeline_layer9_unit0.png", "sw1_curves.png"]
    )  # fmt: skip
    assert main([str(sweep), "--layers", "layer2", "--format", "pdf"]) == 0  # another format: the pngs stay
    assert (figures / "ridgeline_layer1_unit0.png").exists() and (figures / "ridgeline_layer2_unit0.pdf").exists()
    before = {p.name: p.read_bytes() for p in figures.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([str(sweep / "per"), str(sweep / "bn"), "--layers", "layer2"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(p.startswith(str(figures / "bn+per") + "/") for p in printed)
    assert {p.name: p.read_bytes() for p in figures.iterdir() if p.is_file()} == before  # the sweep's untouched
    assert main([str(sweep / "per"), str(sweep / "bn"), str(sweep / "vanilla")]) == 0  # every run: the sweep's
    assert all(p.rsplit("/", 1)[0] == str(figures) for p in capsys.readouterr().out.split())


def test_cli_prints_figure_paths_as_the_paths_were_given(tmp_path, capsys, monkeypatch):
    # one run given relatively printed relative paths, a selection absolute ones: now both as given
    for method, seed in (("bn", 1), ("per", 2), ("vanilla", 3)):
        fake_run(tmp_path / "sweep" / method, method, epochs_of(seed, [1.0, 0.5]))
    monkeypatch.chdir(tmp_path)
    for paths, folder in ((["sweep/per"], "sweep/per/figures"), (["sweep/per", "sweep/bn"], "sweep/figures/bn+per")):
        assert main([*paths, "--layers", "layer2"]) == 0
        printed = capsys.readouterr().out.split()
        assert printed and all(p.rsplit("/", 1)[0] == folder and Path(p).is_file() for p in printed), printed
    assert main([str(tmp_path / "sweep" / "per"), str(tmp_path / "sweep" / "bn"), "--layers", "layer2"]) == 0
    assert all(p.startswith(str(tmp_path / "sweep" / "figures")) for p in capsys.readouterr().out.split())


def test_smoke_runs_are_labelled_and_noted_next_to_real_runs(tmp_path, capsys):
    fake_run(tmp_path / "bn", "bn", epochs_of(1, [1.0, 0.5]))
    smoke = fake_run(tmp_path / "per", "per", epochs_of(2, [1.0, 0.5]))
    smoke.write_config({**smoke.read_config(), "smoke": True})
    data = analysis.plot._load([str(tmp_path)], skip_bad=False)
    assert analysis.plot._label(data, "per") == "per (smoke)" and analysis.plot._label(data, "bn") == "bn"
    assert analysis.plot._run_title(data, "per") == "per (smoke)"  # no second line: the label says no more
    assert main([str(tmp_path), "--layers", "layer2"]) == 0
    err = capsys.readouterr().err
    assert "note: run per is a --smoke run (synthetic data, a few steps): labelled (smoke)" in err
    assert "run bn is a --smoke" not in err
    smoke_too = fake_run(tmp_path / "bn", "bn", epochs_of(1, [1.0, 0.5]))
    smoke_too.write_config({**smoke_too.read_config(), "smoke": True})
    assert main([str(tmp_path), "--layers", "layer2"]) == 0
    assert "--smoke run" not in capsys.readouterr().err  # all smoke: nothing to tell apart
    fig = analysis.plot.sw1_curves(data)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    labels = [t.get_text() for legend in legends for t in legend.get_texts()]
    assert "per (smoke)" in labels and "bn" in labels


def test_cli_help_documents_where_the_figures_go(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "figures/<selection>/" in out and analysis.plot.MANIFEST in out


def test_metrics_draw_one_panel_per_validation_metric(tmp_path):
    # before: the first of val_ppl, val_error, val_loss that any run had: the CNN's val_error disappeared
    fake_run(tmp_path / "cnn", "vanilla", epochs_of(0, [1.0, 1.0]))  # val_error, train_loss, per_penalty
    lm = fake_run(tmp_path / "lstm", "per", epochs_of(1, [1.0, 1.0]), metrics=False)
    lm.write_metrics([{"epoch": e, "val_ppl": 100.0 / e, "val_loss": 4.0, "train_loss": 5.0} for e in (1, 2)])
    fig = metrics_curves(load_run(tmp_path))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["validation perplexity", "validation error (%)"] and "validation loss" not in titles
    assert [ln.get_label() for ln in fig.axes[1].get_lines()] == ["vanilla"]
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["per"]


def test_figure2_says_where_a_unit_is_narrower_than_a_bin_and_which_run_has_which_bins(tmp_path):
    # before: a unit of std 0.02 (inside one 0.5 bin) got bands with a made-up shape, and nothing said so;
    # mixed bins read "bins of width 0.2, 0.5" without saying whose
    fake_run(tmp_path / "a", "vanilla", epochs_of(0, [1.0, 0.02, 1.0]))
    fake_run(tmp_path / "b", "per", epochs_of(1, [1.0, 1.0, 1.0]), bins=100)  # width 0.2
    fig = figure2(load_run(tmp_path), ["layer1"], [0])
    note = texts_of(fig)
    # a review: the note listed every such band (9 lines for 13 rows x 3 methods); now grey ticks mark the epochs
    assert "Grey ticks on the x axis of 1 band panel(s): epochs where the unit's std is below the bin width" in note
    ticks = [
        sorted(x for ln in ax.get_lines() if ln.get_marker() == "|" for x in ln.get_xdata()) for ax in fig.axes[:2]
    ]
    assert ticks == [[2], []]  # vanilla's band at epoch 2, nothing on per's
    assert "bins of width 0.2 (per); 0.5 (vanilla)" in note


def test_layers_sort_by_depth_within_each_run_and_the_title_stays_clear_of_the_panels(tmp_path):
    # before: first appearance across runs (lstm1, lstm2, layer3, layer1, layer2), and with many layers the
    # suptitle overlapped the first row of sw1_curves
    one = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    fake_run(tmp_path / "a", "per", [{"lstm1": one, "lstm2": one}])
    fake_run(tmp_path / "b", "per", [{"layer3": one}])
    fake_run(tmp_path / "c", "vanilla", [{f"layer{i}": one for i in range(1, 31)}])
    fig = sw1_curves(load_run(tmp_path), n_projections=8)
    assert [ax.get_title() for ax in fig.axes][:6] == ["lstm1", "lstm2", "layer1", "layer2", "layer3", "layer4"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bottom = fig._suptitle.get_window_extent(renderer).y0
    assert max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes) < bottom


def test_cli_out_that_is_a_file_says_so(tmp_path, capsys):
    # before: "error: [Errno 17] File exists"
    rd = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0]))
    (tmp_path / "file").write_text("")
    assert main([str(rd.root), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --out {tmp_path / 'file'} is a file: give --out a folder (it is created if missing), "
        "or move the file away\n"
    )
    assert main([str(rd.root), "--out", str(tmp_path / "file" / "sub")]) == 2
    assert f"lies in {tmp_path / 'file'}, which is a file" in capsys.readouterr().err


def test_the_manifest_never_removes_or_silently_replaces_a_users_file(tmp_path, capsys, monkeypatch):
    # a review: any bare name the manifest listed was deleted (an edited manifest naming holiday.png); a figure
    # edited after a call was deleted by the next; a user's own file of a name the tool writes was overwritten
    # without a word; a pdf -> png -> pdf sequence and symlinks were untested
    import json

    run = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0])).root
    figures = run / "figures"
    assert main([str(run), "--layers", "layer1"]) == 0
    manifest = json.loads((figures / analysis.plot.MANIFEST).read_text())["written"]
    assert set(manifest) == {"figure2.png", "ridgeline_layer1_unit0.png", "sw1_curves.png", "metrics.png"}
    (figures / "holiday.png").write_bytes(b"mine")
    st_ = (figures / "holiday.png").stat()
    manifest["holiday.png"] = [st_.st_size, st_.st_mtime_ns]  # listed, with its very fingerprint
    (figures / analysis.plot.MANIFEST).write_text(json.dumps({"written": manifest}))
    (figures / "ridgeline_layer1_unit0.png").write_bytes(b"edited after the call")
    (figures / "ridgeline_layer2_unit0.png").write_bytes(b"the user's own")  # this call writes that name
    (figures / "ridgeline_layer9_unit0.png").symlink_to(figures / "holiday.png")
    capsys.readouterr()
    assert main([str(run), "--layers", "layer2"]) == 0
    err = capsys.readouterr().err
    assert (figures / "holiday.png").read_bytes() == b"mine"  # not a name this tool writes
    assert (figures / "ridgeline_layer1_unit0.png").read_bytes() == b"edited after the call"  # changed: the user's
    assert (figures / "ridgeline_layer9_unit0.png").is_symlink()
    assert "removed" not in err
    assert f"note: replaced {figures / 'ridgeline_layer2_unit0.png'}, which no earlier call" in err
    assert f"note: replaced {figures / 'ridgeline_layer1_unit0.png'}" not in err  # not written this time
    # pdf -> png -> pdf: the first pdf call's stale pdfs are removed by the second pdf call, the pngs stay
    assert main([str(run), "--layers", "layer3", "--format", "pdf"]) == 0
    assert main([str(run), "--layers", "layer2"]) == 0
    capsys.readouterr()
    assert main([str(run), "--layers", "layer2", "--format", "pdf"]) == 0
    err = capsys.readouterr().err
    assert f"note: removed {figures / 'ridgeline_layer3_unit0.pdf'}" in err
    assert (figures / "ridgeline_layer2_unit0.png").is_file() and (figures / "ridgeline_layer2_unit0.pdf").is_file()
    assert not (figures / "ridgeline_layer3_unit0.pdf").exists()


def test_a_selections_folder_is_its_own_and_a_selection_without_a_common_folder_needs_out(tmp_path, monkeypatch):
    # a review: {"a b", c} and {a_b, c} both wrote figures/a_b+c/; paths sharing only / or ~ walked the whole tree
    sweep = tmp_path / "sweep"
    for name in ("a b", "a_b", "c", "other"):
        fake_run(sweep / name, "per", epochs_of(0, [1.0]))
    data = load_run(sweep)
    one = analysis.figdir.default_out([sweep / "a b", sweep / "c"], data)
    two = analysis.figdir.default_out([sweep / "a_b", sweep / "c"], data)
    assert one != two and one.parent == two.parent == sweep / "figures"
    assert analysis.figdir.default_out([sweep / "c", sweep / "other"], data) == sweep / "figures" / "c+other"
    monkeypatch.setattr(Path, "home", lambda: sweep)
    with pytest.raises(analysis.plot.PlotError, match="share no folder below .* give --out DIR"):
        analysis.figdir.default_out([sweep / "c", sweep / "other"], data)


def test_band_titles_name_each_shown_run_once(tmp_path):
    # a review: a method whose run lacked the top row's layer got its column title twice
    fake_run(tmp_path / "cnn", "per", epochs_of(0, [1.0, 1.0]))
    lstm = {"lstm1": known_data(5, 600, 1.0)}
    fake_run(tmp_path / "lm", "vanilla", [lstm, lstm])
    fig = figure2(load_run(tmp_path), ["lstm1", "layer1"], [0])
    titles = [ax.get_title() for ax in fig.axes if "quantile bands" in ax.get_title()]
    assert len(titles) == len(set(titles)) == 2


def test_figure_details_a_review_found_untested(tmp_path):
    # two-epoch ranges are not widened; +inf and -inf are counted apart; a unit between one and two bin widths
    # wide gets no tick; NaN marks stay on the run that recorded them
    epochs = epochs_of(0, [1.0, 0.5])  # unit 0: std 0.75, above the 0.5 bin width, below two
    epochs[1]["layer1"][:3, 0] = np.inf
    epochs[1]["layer1"][3:5, 0] = -np.inf
    fake_run(tmp_path / "a", "per", epochs)
    fake_run(tmp_path / "b", "vanilla", epochs_of(1, [1.0, 0.5]))
    data = load_run(tmp_path)
    fig = figure2(data, ["layer1"], [0])
    lo, hi = fig.axes[0].get_xlim()
    assert 0.9 < lo < 1 and 2 < hi < 2.1
    assert not any(ln.get_marker() == "|" for ax in fig.axes for ln in ax.get_lines())
    assert [nonfinite_marks(ax) for ax in fig.axes[:2]] == [[], [2]]  # b's column (vanilla) first, then a's
    notes = analysis.plotdata._nonfinite_notes(data, "eval")
    assert len(notes) == 1 and "(3 +inf, 2 -inf values)" in notes[0]


def test_metrics_mark_a_run_that_logged_nan_every_epoch_and_not_one_that_skipped_a_key(tmp_path):
    # a review: a run whose val_ppl was NaN at every epoch vanished from the figure without a word, and a run
    # missing the key at one epoch was said to have logged a non-finite value there
    for name, rows in (
        ("diverged", [{"epoch": e, "val_ppl": float("nan"), "train_loss": 5.0} for e in (1, 2, 3)]),
        ("sparse", [{"epoch": 1, "val_ppl": 50.0}, {"epoch": 2, "train_loss": 4.0}, {"epoch": 3, "val_ppl": 40.0}]),
    ):
        rd = RunDir(tmp_path / name)
        rd.write_config({"method": "per" if name == "sparse" else "vanilla", "epochs": 3})
        rd.write_metrics(rows)
    fig = metrics_curves(load_run(tmp_path))
    ppl = next(ax for ax in fig.axes if ax.get_title() == "validation perplexity")
    assert nonfinite_marks(ppl) == [1, 2, 3]
    note = texts_of(fig)
    assert "run diverged logged a non-finite val_ppl at epochs 1-3" in note
    assert "run sparse logged a non-finite" not in note


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdefg"), max_size=6, unique=True), max_size=5))
def test_merging_layer_orders_keeps_every_layer_once_and_each_order_without_cycles(orders):
    import graphlib
    import itertools

    merged = analysis.plotdata._merge_orders(orders)
    assert sorted(merged) == sorted({n for o in orders for n in o})  # none lost, none twice (cycles too)
    pairs = {(a, b) for o in orders for a, b in itertools.pairwise(o)}
    graph: dict[str, set[str]] = {}
    for a, b in pairs:
        graph.setdefault(b, set()).add(a)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        return  # the orders contradict each other: any order of the names will do
    pos = {n: i for i, n in enumerate(merged)}
    assert all(pos[a] < pos[b] for a, b in pairs)


def test_a_failed_or_copied_figures_folder_keeps_its_record(tmp_path, capsys, monkeypatch):
    # a review: a call failing midway left rewritten figures that later calls called "replaced" and never removed;
    # a copied folder (new modification times) lost its record the same way
    import shutil

    run = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0])).root
    figures = run / "figures"
    assert main([str(run), "--layers", "layer1"]) == 0
    real_save, calls = analysis.plot.save_figure, []

    def failing(fig, path, fmt):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(fig, path, fmt)

    monkeypatch.setattr(analysis.plot, "save_figure", failing)
    assert main([str(run), "--layers", "layer2", "layer3"]) == 2  # figure2, ridgeline layer2, then the failure
    monkeypatch.setattr(analysis.plot, "save_figure", real_save)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)  # new times, same bytes
    for folder in (run, copy):
        capsys.readouterr()
        assert main([str(folder), "--layers", "layer3"]) == 0
        err = capsys.readouterr().err
        assert "replaced" not in err
        names = sorted(p.name for p in (folder / "figures").glob("*.png"))
        assert names == ["figure2.png", "metrics.png", "ridgeline_layer3_unit0.png", "sw1_curves.png"], folder
    assert figures.is_dir()


def test_figures_of_a_hand_built_or_filtered_run_data_and_a_selection_beside_a_hidden_run(tmp_path):
    # a review: metrics_curves failed on RunData built by hand (no metrics_logged) or with metrics filtered after
    # loading (unalignable mask); a selection beside a run in a hidden folder (which find_runs finds and the sweep
    # plot draws) wrote into the sweep's own figures/
    import dataclasses

    fake_run(tmp_path / "a", "per", epochs_of(0, [1.0, 1.0, 1.0]))
    fake_run(tmp_path / "c", "vanilla", epochs_of(1, [1.0, 1.0, 1.0]))
    data = load_run(tmp_path)
    data.metrics = data.metrics[data.metrics["epoch"] <= 2]
    assert len(metrics_curves(data).axes) >= 2
    plain = dataclasses.replace(data, metrics_logged=None)
    assert len(metrics_curves(plain).axes) >= 2
    fake_run(tmp_path / ".old" / "x", "bn", epochs_of(2, [1.0]))
    assert analysis.figdir.default_out([tmp_path / "a", tmp_path / "c"], load_run(tmp_path)).name == "a+c"


def test_a_first_call_into_a_users_folder_says_which_of_their_files_it_replaces(tmp_path, capsys):
    # a first-user pass: without a manifest (a folder this command never wrote into) a user's figure2.png was
    # replaced without a word
    run = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0])).root
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "figure2.png").write_bytes(b"my own figure")
    assert main([str(run), "--out", str(mine), "--layers", "layer1"]) == 0
    err = capsys.readouterr().err
    assert f"note: replaced {mine / 'figure2.png'}, which no earlier call of this command wrote" in err


def test_a_run_still_training_is_noted_as_unfinished(tmp_path, capsys):
    # a first-user pass: plotting a run at epoch 17 of 30 said nothing (the sweep's table calls it unfinished)
    run = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0]))
    run.write_config({"method": "per", "epochs": 30, "record_every": 1})
    assert main([str(run.root), "--layers", "layer1"]) == 0
    assert "note: run r is unfinished (epoch 2 of 30: still training, or stopped)" in capsys.readouterr().err
    # a review: a metrics line without an epoch (NaN) crashed it; a run without metrics was called unfinished
    run.metrics_path.write_text('{"note": "start"}\n{"epoch": Infinity}\n' + run.metrics_path.read_text())
    assert main([str(run.root), "--layers", "layer1"]) == 0
    err = capsys.readouterr().err
    assert "run r is unfinished (epoch 2 of 30" in err
    assert f"note: {run.metrics_path}: 2 lines without an integer epoch left out" in err
    run.metrics_path.unlink()
    assert main([str(run.root), "--layers", "layer1"]) == 0
    assert "unfinished" not in capsys.readouterr().err


def test_a_second_call_into_a_folder_being_written_is_refused(tmp_path, capsys):
    # a first-user pass: two calls into one --out at once mixed their figures and manifests without a word
    import fcntl
    import os

    run = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 1.0])).root
    out = tmp_path / "figs"
    out.mkdir()
    held = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running call holds it
        assert main([str(run), "--out", str(out), "--layers", "layer1"]) == 2
        assert f"another python -m analysis.plot is writing into {out}" in capsys.readouterr().err
        assert list(out.iterdir()) == []
    finally:
        os.close(held)
    assert main([str(run), "--out", str(out), "--layers", "layer1"]) == 0  # once it is done
    assert not [p for p in out.iterdir() if "lock" in p.name]  # and no lock file is left
    assert main([str(run), "--out", str(tmp_path / "new" / "f"), "--layers", "nosuch"]) == 2
    assert not (tmp_path / "new").exists()  # a failed first call leaves no folder behind, parents included
    (tmp_path / "old").mkdir()
    assert main([str(run), "--out", str(tmp_path / "gone" / ".." / "old"), "--layers", "nosuch"]) == 2
    assert (tmp_path / "old").is_dir()  # a folder that was there stays, however the path is spelled


def test_sw1_curves_fall_back_to_the_split_with_reservoir_rows_unless_one_is_asked_for(tmp_path, capsys):
    # an audit: a notebook run with an eval pass but reservoirs of the train split only (the recorder's default)
    # lost its SW1 figure under the default split, with a note naming a split the user never chose
    fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 0.5]), splits=("train",))
    assert main([str(tmp_path / "r"), "--layers", "layer2"]) == 0
    out, err = capsys.readouterr()
    assert "sw1_curves.png" in out and "note: sw1_curves shows split train: split eval has no reservoir rows" in err
    assert main([str(tmp_path / "r"), "--layers", "layer2", "--split", "eval"]) == 0
    out, err = capsys.readouterr()
    assert "sw1_curves.png" not in out and "note: sw1_curves not drawn: split 'eval' has no reservoir rows" in err


def test_lambdas_that_are_no_numbers_and_binnings_that_change_are_not_tracebacks(tmp_path, capsys):
    # an audit: a hand-written "lam": [0.01, 0.001] (or "big" next to a number) was a TypeError traceback
    fake_run(tmp_path / "s" / "a", "per", epochs_of(0, [1.0, 0.5]), lam=[1e-2, 1e-3])
    fake_run(tmp_path / "s" / "b", "per", epochs_of(1, [1.0, 0.5]), lam="big")
    fake_run(tmp_path / "s" / "c", "per", epochs_of(2, [1.0, 0.5]), lam=0.1)
    assert main([str(tmp_path / "s"), "--layers", "layer2"]) == 0
    data = load_run(tmp_path / "s")
    assert analysis.plot._lams_of(data, "per") == [0.1]
    # a recorder whose bins changed during the run (40, then 20): one error line, not a ragged-array traceback
    run = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 0.5, 0.5, 0.5]))
    other = fake_run(tmp_path / "o", "per", epochs_of(0, [1.0, 0.5, 0.5, 0.5]), bins=20)
    for epoch in (3, 4):
        shutil.copy(other.activation_path(epoch), run.activation_path(epoch))
    capsys.readouterr()
    assert main([str(run.root), "--layers", "layer2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: run r recorded histograms of layer2 with different numbers of bins (40 from epoch 1, 20 from epoch 3)"
    )
    assert err.count("\n") == 1


@pytest.mark.parametrize("module", ["analysis.plot", "analysis.bounds"])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, capsys, monkeypatch, module):
    # an audit: analysis.plot "" (an unset "$RUN") plotted every run below the working directory into ./figures
    import importlib

    fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 0.5]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["r", ""])
    assert stop.value.code == 2
    assert "an empty path (an unset shell variable?): name a folder" in capsys.readouterr().err
    assert not (tmp_path / "figures").exists() and not (tmp_path / "r" / "figures").exists()


def test_metric_panels_are_logarithmic_only_over_a_decade_or_more(tmp_path):
    # an audit: a loss between 2.2 and 2.3 on a log axis had ticks like 5.4x10^1 and none near the curve
    rd = fake_run(tmp_path / "r", "per", epochs_of(0, [1.0, 0.5]), metrics=False)
    rd.write_metrics([{"epoch": e, "val_error": v, "train_loss": t} for e, v, t in ((1, 90.0, 2.3), (2, 2.0, 2.2))])
    fig = metrics_curves(load_run(tmp_path / "r"))
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["log", "linear"]


def test_a_bad_metrics_line_is_not_counted_as_what_held_the_activations(tmp_path, capsys):
    # a line of metrics.jsonl left out by --skip-bad holds no activations: the note must not blame it
    plain = RunDir(tmp_path / "plain")
    plain.write_config({"method": "vanilla"})
    plain.metrics_path.write_text('{"epoch": 1, "val_error\n{"epoch": 2, "val_error": 5.0}\n')
    assert main([str(plain.root), "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert f"note: no activations recorded in {plain.root}: train with --record all" in err
    assert "left out" not in err


def test_values_that_are_no_numbers_are_left_out_of_the_metrics_with_a_note(tmp_path, capsys):
    # an audit: {"val_error": "12.5"} was a TypeError after some figures were written; a review of the first fix
    # (such lines made bad lines) found a hand-logged time stamp or list of lrs then lost every epoch's metrics
    rd = RunDir(tmp_path / "own")
    rd.write_config({"method": "mine"})
    rows = [{"epoch": e, "val_error": 50.0 / e, "train_loss": 2.0, "time": "12:00", "lr": [0.1]} for e in (1, 2)]
    rd.write_metrics([*rows, {"epoch": "3", "val_error": 12.5}, {"epoch": 4, "val_error": 12.5, "ok": True}])
    assert main([str(rd.root)]) == 0
    out, err = capsys.readouterr()
    assert out.split()[-1].endswith("metrics.png")
    assert (
        f"note: {rd.metrics_path}: values that are not numbers left out: lr (2 lines), time (2 lines), ok (1 line); "
        "1 line without an integer epoch left out"
    ) in err
    data = load_run(rd.root)
    assert data.metrics["epoch"].tolist() == [1, 2, 4] and data.metrics["val_error"].tolist() == [50.0, 25.0, 12.5]
    assert "ok" not in data.metrics and "time" not in data.metrics  # left out: not logged, not a NaN logged
