"""Write notebooks/*.ipynb from plain cell lists (python tools/make_notebooks.py); the source stays reviewable."""

# ruff: noqa: E501  (the strings below are notebook cells)

import nbformat as nbf


def make(path, cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # fixed ids: regenerating an unchanged notebook changes no byte
    nbf.write(nb, path)


make(
    "notebooks/01_figure1_moment_statistics.ipynb",
    [
        """md:# Figure 1: what moment statistics miss

Four 2-D distributions with **mean 0 and unit variance per coordinate** — (a) Gaussian, (b) correlated,
(c) skewed, (d) multimodal; (c) and (d) also have identity covariance. Batch normalization standardizes
each unit, so it treats all four alike; decorrelated BN whitens, so it treats (a), (c), (d) alike. A
distance between distributions tells them apart. We also look at what PER's bound says.""",
        """import numpy as np
import pandas as pd

from analysis.figure1 import figure1, figure1_table
from analysis.toy import FIGURE1_NAMES, batch_norm, figure1_distributions, whiten

samples = figure1_distributions(n=2000, seed=0)
pd.DataFrame(
    {
        FIGURE1_NAMES[k]: {
            "mean": np.round(X.mean(0), 3).tolist(),
            "var": np.round(X.var(0), 3).tolist(),
            "corr": round(float(np.corrcoef(X.T)[0, 1]), 3),
        }
        for k, X in samples.items()
    }
).T""",
        """md:Same first two moments per unit everywhere; only (b) is correlated. Now the numbers the figure shows:
how much BN and ZCA whitening (DBN) change each sample, the sliced Wasserstein-1 distance to N(0, I)
(exact on every slice), and the Minkowski bound L_per that PER minimizes (same 256 slices).""",
        """table = pd.DataFrame(figure1_table(samples)).set_index("name").round(3)
table""",
        """md:- BN changes nothing (all four are already standardized); DBN changes only (b).
- SW1 separates all four.
- L_per is **not** the distance: it ranks the skewed (c) *below* the Gaussian (a), because it is an upper
  bound whose minimum (0.798) is a point mass at 0, not N(0, I) (where it is 1.128).""",
        """assert (table["bn_change"] < 1e-9).all()
assert table["dbn_change"].idxmax() == "(b) correlated" and (table["dbn_change"].drop("(b) correlated") < 1e-9).all()
assert table["sw1"].idxmin() == "(a) Gaussian" and table["sw1"].nunique() == 4
assert table.loc["(c) skewed", "l_per"] < table.loc["(a) Gaussian", "l_per"]  # the bound misranks (c)""",
        """fig = figure1(n=2000, seed=0)""",
        """md:Orange arrows: where PER's gradient pushes each sample. Given the slices, PER's gradient at a point
depends only on that point, so the field is the same in every panel: a pull towards 0, even in (a),
where nothing should move. Purple: the descent direction of the exact sliced distance, which depends on
the whole sample and moves samples towards where the Gaussian has mass; in (a) it only corrects the
sample's own noise (shorter arrows on average than in (c) and (d), little net push). Its size does not
shrink with the distance (a sample's gradient is +-1/n on every slice), so the arrows in (a) are not ~0.
Each colour has one length scale across the four panels (footnote of the figure).""",
    ],
)

make(
    "notebooks/02_run_directory.ipynb",
    [
        """md:# Exploring a run directory: how activations evolve under vanilla, BN and PER

Train the demo net briefly with three methods (the same thing `make demo` does, shorter), then read
the run directories back with `analysis.load_run` and look at the activation statistics the
recorder kept: per-unit moments, histograms and reservoirs of joint rows.""",
        """import tempfile
from pathlib import Path

from analysis import load_run
from per_core.configs import get_preset
from per_core.train import train

sweep = Path(tempfile.mkdtemp())
for method in ["vanilla", "bn", "per"]:
    cfg = get_preset("demo").replace(method=method, epochs=8, milestones=[6])
    train(cfg, sweep / method, progress=False)
data = load_run(sweep)
data.metrics.groupby("method")[["val_error", "per_penalty"]].last()""",
        """md:`data.stats` is tidy: one row per (run, epoch, split, layer, unit). The `eval` split is a fixed
validation batch recorded in eval mode at every epoch, so an epoch-to-epoch change is the network's,
not the data's.""",
        """ev = data.stats[(data.stats.split == "eval") & (data.stats.unit == 0) & (data.stats.layer == "layer3")]
ev.pivot_table(index="epoch", columns="method", values="var", observed=True).round(2)""",
        """assert set(data.methods.values()) == {"vanilla", "bn", "per"}
assert {"mean", "var", "skew", "kurt", "nan", "under", "over"} <= set(data.stats.columns)""",
        """md:Figure 2 of the paper for this run: quantile bands of one unit over epochs per method, and its
mean and variance.""",
        """from analysis.plot import figure2, ridgeline, sw1_curves

fig = figure2(data, layers=["layer3", "layer6"], units=[0])""",
        """md:The true distance to N(0, I) per layer (solid) against the bound L_per (dashed): where a dashed
curve sits near 0.798 while the solid one rises, the layer's activations are shrinking towards a
point mass.""",
        """fig = sw1_curves(data)""",
        """fig = ridgeline(data, "layer6", unit=0)""",
        """md:The same numbers as tables, with the bound checks (`python -m analysis.bounds RUN_DIR` writes
them to `RUN_DIR/analysis/`).""",
        """from analysis.tables import layer_bounds

bounds = layer_bounds(load_run(sweep / "per"))
assert bounds["per_slice_ok"].all()
bounds[bounds.split == "eval"].pivot_table(index="epoch", columns="layer", values="sw1", observed=True).round(3)""",
    ],
)

make(
    "notebooks/03_bounds.ipynb",
    [
        """md:# Checking the theory: SW1, the bound L_per, and W1

PER minimizes L_per, an upper bound on SW1(nu, N(0, I)) obtained with Minkowski's inequality. Here we
check the inequalities numerically, see where the bound is loose and why, and what that means for the
choice of lambda.""",
        """import math

import numpy as np
import pandas as pd

from analysis import check_bounds

rng = np.random.default_rng(0)
FLOOR, AT_GAUSS = math.sqrt(2 / math.pi), 2 / math.sqrt(math.pi)""",
        """md:## 1. Sample size: Gaussian samples in d = 8
The true SW1 of an n-point Gaussian sample shrinks like 1/sqrt(n); L_per goes to 1.128, never to 0; the
exact W1 to an n-point Gaussian *sample* (POT) is biased upwards and shrinks slowly in high dimension.""",
        """rows = []
for n in [16, 64, 256, 1024]:
    X = rng.normal(size=(n, 8))
    rep = check_bounds(X, n_projections=128, seed=1)
    rows.append({"n": n, "SW1": rep.sw1, "L_per": rep.lper, "W1 (OT to a Gaussian sample)": rep.w1, "checks": rep.passed})
by_n = pd.DataFrame(rows).set_index("n").round(3)
assert by_n["checks"].all() and by_n["SW1"].is_monotonic_decreasing
by_n""",
        """md:## 2. Dimension: 512 Gaussian rows as d grows
The same report: SW1 and L_per on the same 128 slices, and the exact W1 (for d = 1 the closed form,
which equals SW1; for d > 1 exact OT between the rows and a 512-point Gaussian sample).""",
        """rows = []
for d in [1, 2, 8, 32, 128]:
    X = rng.normal(size=(512, d))
    rep = check_bounds(X, n_projections=128, seed=1)
    rows.append({"d": d, "SW1": rep.sw1, "L_per": rep.lper, "W1 (OT to a Gaussian sample)": rep.w1, "checks": rep.passed})
by_d = pd.DataFrame(rows).set_index("d")
assert by_d["checks"].all()
assert (by_d["SW1"] <= by_d["L_per"]).all() and (by_d["SW1"] <= by_d["W1 (OT to a Gaussian sample)"] + 1e-9).all()
by_d.round(3)""",
        """md:SW1 <= L_per and SW1 <= W1 in every row. The sliced distance of a fixed-size Gaussian sample hardly
depends on d (every slice is a 1-D problem); L_per stays near 1.128: the bound's gap does not close with
more data or fewer dimensions. W1 grows with d: a finite sample is far from a distribution in high
dimension (the curse of dimensionality, like n^(-1/d)), and the OT estimate against a second sample
adds an upward bias, so from d = 8 on it is even larger than L_per. Neither this W1 estimate nor L_per
shows how close to N(0, I) these samples are; SW1 does.

## 3. The point-mass trap
Shrink a Gaussian sample towards 0: L_per falls to its floor sqrt(2/pi) while the true distance
**rises**. A regularizer that only minimizes L_per is rewarded for collapsing activations.""",
        """import matplotlib.pyplot as plt

from analysis.figures import point_mass_trap

fig = point_mass_trap(n=2000, dim=4)""",
        """md:## 4. Lambda sweep on the demo net
Train the digits CNN with PER at four lambdas (6 epochs each at a constant learning rate) and measure,
on the fixed evaluation batch after the last epoch, the true SW1 of every layer next to its L_per
(same 256 slices).""",
        """import tempfile
from pathlib import Path

from analysis.io import load_run
from analysis.tables import layer_bounds
from per_core.configs import get_preset
from per_core.train import train

root = Path(tempfile.mkdtemp())
lams, epochs = [0.0, 0.1, 0.3, 1.0], 6
for lam in lams:
    # record only the last epoch (its eval batch keeps a reservoir of joint rows for SW1)
    cfg = get_preset("demo").replace(method="per", lam=lam, epochs=epochs, milestones=[], record_every=epochs)
    train(cfg, root / f"lam{lam:g}", progress=False)
last = layer_bounds(load_run(root))
last = last[(last.split == "eval") & (last.epoch == epochs)].copy()
last["lam"] = last["run"].str.removeprefix("lam").astype(float)
sw1 = last.pivot_table(index="lam", columns="layer", values="sw1", observed=True)  # (lambda, layer)
lper = last.pivot_table(index="lam", columns="layer", values="lper", observed=True)
pd.concat({"SW1": sw1.assign(mean=sw1.mean(axis=1)), "L_per": lper.assign(mean=lper.mean(axis=1))}, axis=1).round(3)""",
        """from matplotlib.lines import Line2D

fig, ax = plt.subplots(figsize=(6.4, 4))
x = np.where(sw1.index > 0, sw1.index, min(lams[1:]) / 10)  # lambda = 0 drawn a decade below the smallest
colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, sw1.shape[1]))
for layer, c in zip(sw1.columns, colors):
    ax.plot(x, sw1[layer], "o-", color=c, label=layer)
    ax.plot(x, lper[layer], "s--", color=c)
ax.set_xscale("log")
ax.set_xticks(x, ["0"] + [f"{lam:g}" for lam in lams[1:]])
ax.minorticks_off()
ax.axhline(FLOOR, color="gray", lw=0.8, ls=":")
ax.axhline(AT_GAUSS, color="gray", lw=0.8, ls="-.")
ax.annotate("0.798: L_per floor = SW1 of a point mass", (x[0], FLOOR), fontsize=7, va="top")
ax.annotate("1.128: L_per at N(0, I)", (x[0], AT_GAUSS), fontsize=7, va="bottom")
styles = [Line2D([], [], color="k", ls="-", marker="o"), Line2D([], [], color="k", ls="--", marker="s")]
handles, labels = ax.get_legend_handles_labels()
ax.legend(handles + styles, labels + ["SW1 to N(0, I) (true)", "L_per (bound)"], fontsize=7, ncol=2)
ax.set(xlabel="lambda (log scale)", ylabel="value", title=f"Demo net, eval batch, after {epochs} epochs")

top = lams[-1]
# the strongest PER drives the bound to its floor, in every layer ...
assert lper.loc[top].mean() < FLOOR + 0.01 and (lper.idxmin() == top).all() and (lper.loc[top] < FLOOR + 0.02).all()
# ... while the true distance has grown again, on average and in every layer
assert sw1.loc[top].mean() > sw1.mean(axis=1).min() + 0.2
assert (sw1.loc[top] > sw1.min() + 0.1).all()""",
        """md:L_per (dashed) falls with lambda in every layer, down to its floor 0.798; the true SW1 (solid) does
not follow it: in this run its mean over layers is smallest at an intermediate lambda, and at the largest
lambda every layer's SW1 is back up near 0.798, the distance of a point mass. The activations are being
shrunk towards the bound's minimizer (a point mass at 0), not matched to N(0, I). Choose lambda by the
true distance and by validation error, never by the bound.""",
    ],
)
