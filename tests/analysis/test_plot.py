"""Figures from run directories (analysis.plot): numbers, panels, colours and the command line."""

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

from analysis.io import load_run
from analysis.plot import (
    QUANTILES,
    PlotError,
    figure2,
    hist_quantiles,
    main,
    metrics_curves,
    ridgeline,
    sw1_curves,
    sw1_table,
    unit_evolution,
)
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


def fake_run(root, method, data_per_epoch, *, reservoir=True, metrics=True, lam=None):
    """A run dir whose layers recorded exactly the given {layer: (n, units)} arrays per epoch, in both splits."""
    rd = RunDir(root)
    lams = {} if lam is None else {"lam": lam}
    rd.write_config({"method": method, "epochs": len(data_per_epoch), "record_every": 1, **lams})
    mods = {name: nn.Identity() for name in data_per_epoch[0]}
    rec = ActivationRecorder(
        nn.ModuleDict(mods), mods, reservoir=256, reservoir_every=1, reservoir_splits=("train", "eval")
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
    assert titles[1:] == ["bn", "per"]  # one panel per method (first bn seed)
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
    for title, ax in bands.items():
        method = title.split(")")[1].split(":")[0].strip()
        assert to_hex(ax.collections[0].get_facecolor()[0], keep_alpha=False) == want[method]
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
    assert main([str(rd.root), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"skipped: {bad}" in captured.err
    assert len(captured.out.split()) == 4  # figure2, ridgeline, sw1 curves, metrics
    assert "note: run r has no activations of epoch 2 in split eval (its config records every 1 epochs" in captured.err


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
    assert "note: sw1_curves not drawn: split 'eval' has no reservoir rows" in captured.err


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
