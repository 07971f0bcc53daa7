"""Write notebooks/*.ipynb from plain cell lists (python tools/make_notebooks.py); the source stays reviewable."""

# ruff: noqa: E501  (the strings below are notebook cells)

import nbformat as nbf


def make(path, cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
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
the whole sample (and averages to ~0 in (a)).""",
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

from analysis import check_bounds, per_bound, sliced_w1_to_normal, w1

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
        """md:## 2. Dimension: 512 Gaussian rows as d grows""",
        """rows = []
for d in [1, 2, 8, 32, 128]:
    X = rng.normal(size=(512, d))
    rows.append({"d": d, "SW1": sliced_w1_to_normal(X, 128), "L_per": per_bound(X, 128)})
pd.DataFrame(rows).set_index("d").round(3)""",
        """md:The sliced distance of a fixed-size Gaussian sample hardly depends on d (every slice is a 1-D
problem); L_per stays near 1.128: the bound's gap does not close with more data or fewer dimensions.

## 3. The point-mass trap
Shrink a Gaussian sample towards 0: L_per falls to its floor sqrt(2/pi) while the true distance
**rises**. A regularizer that only minimizes L_per is rewarded for collapsing activations.""",
        """import matplotlib.pyplot as plt

from analysis.figures import point_mass_trap
from analysis.style import method_color, use_style

fig = point_mass_trap(n=2000, dim=4)""",
        """md:## 4. Lambda sweep on the demo net
Train the digits CNN with PER at several lambdas (a few epochs each) and measure, on the fixed
evaluation batch, the true SW1 per layer next to L_per. Past some lambda the bound keeps falling while
the true distance grows again: more regularization stops helping.""",
        """import tempfile
from pathlib import Path

from analysis.io import load_run
from analysis.tables import layer_bounds
from per_core.configs import get_preset
from per_core.train import train

root = Path(tempfile.mkdtemp())
lams = [0.0, 1e-2, 1e-1, 1.0, 10.0]
for lam in lams:
    # record only the last epoch (its eval batch keeps a reservoir of joint rows for SW1)
    cfg = get_preset("demo").replace(method="per", lam=lam, epochs=6, milestones=[], record_every=6)
    train(cfg, root / f"lam{lam:g}", progress=False)
last = layer_bounds(load_run(root))
last = last[(last.split == "eval") & (last.epoch == 6)].copy()
last["lam"] = last["run"].str.removeprefix("lam").astype(float)
summary = last.groupby("lam")[["sw1", "lper"]].mean()
summary""",
        """fig, ax = plt.subplots(figsize=(5, 3.2))
x = np.array(summary.index) + 1e-3  # lambda = 0 drawn at 1e-3 on the log axis
ax.semilogx(x, summary["sw1"], "o-", color="k", label="SW1 to N(0, I), mean over layers")
ax.semilogx(x, summary["lper"], "s--", color=method_color("per"), label="L_per, mean over layers")
ax.axhline(FLOOR, color="gray", lw=0.8, ls=":")
ax.set(xlabel="lambda (0 drawn at 1e-3)", ylabel="value", title="Demo net, eval batch, after 6 epochs")
ax.legend()
assert summary["lper"].iloc[-1] < summary["lper"].iloc[0]  # strong PER drives the bound down ...""",
        """md:Read it with the warning in mind: L_per decreases monotonically with lambda, but the true SW1 does
not follow it all the way; where the curves part, the activations are being shrunk towards the
bound's minimizer (a point mass), not matched to N(0, I). Choose lambda by the true distance and by
validation error, never by the bound.""",
    ],
)
