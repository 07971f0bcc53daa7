"""Figure 1: the four distributions share their moments, and the figure has its panels and table."""

import numpy as np
import pytest

from analysis.figure1 import figure1, figure1_table
from analysis.style import METHOD_COLORS, method_color
from analysis.toy import batch_norm, figure1_distributions, whiten


def test_distributions_share_mean_and_variance_and_c_d_have_identity_covariance():
    s = figure1_distributions(3000, seed=1)
    for X in s.values():
        np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(X.var(0), 1, atol=1e-12)
    for k in "acd":
        np.testing.assert_allclose(np.cov(s[k].T, bias=True), np.eye(2), atol=1e-12)
    assert abs(np.corrcoef(s["b"].T)[0, 1] - 0.8) < 0.05
    assert abs(float(((s["c"] ** 3).mean(0)).mean()) - 2) < 0.5  # skewness of a standardized exponential is 2


def test_bn_and_whitening_definitions():
    X = np.random.default_rng(0).normal(size=(500, 3)) @ np.array([[2, 0, 0], [1, 1, 0], [0, 0, 3.0]]) + 5
    np.testing.assert_allclose(batch_norm(X).std(0), 1)
    W = whiten(X)
    np.testing.assert_allclose(np.cov(W.T, bias=True), np.eye(3), atol=1e-10)


def test_bn_and_whitening_of_degenerate_samples_raise_unless_eps_regularizes_them():
    # before: NaN columns (batch_norm) or an all-NaN array (whiten) with only a RuntimeWarning
    rng = np.random.default_rng(1)
    X = np.c_[rng.normal(size=50), np.full(50, 2.0)]
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] of X are constant.*eps > 0"):
        batch_norm(X)
    for degenerate in (X, X[:1] + 0.0, np.c_[X[:, 0], 3 * X[:, 0]]):  # constant, one row, collinear
        with pytest.raises(ValueError, match="singular.*eps > 0"):
            whiten(degenerate)
    assert np.isfinite(batch_norm(X, eps=1e-5)).all() and np.isfinite(whiten(X, eps=1e-5)).all()
    reference = (X[:, 0] - X[:, 0].mean()) / np.sqrt(X[:, 0].var() + 1e-5)
    np.testing.assert_allclose(batch_norm(X, eps=1e-5)[:, 0], reference)
    with pytest.raises(ValueError, match="finite"):
        batch_norm(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        whiten(np.ones(4))


def test_table_bn_sees_nothing_dbn_only_b_distances_tell_all_apart():
    rows = {r["name"][:3]: r for r in figure1_table(figure1_distributions(2000), n_projections=128)}
    assert all(r["bn_change"] < 1e-9 for r in rows.values())
    assert rows["(b)"]["dbn_change"] > 0.3 and all(rows[k]["dbn_change"] < 1e-9 for k in ("(a)", "(c)", "(d)"))
    sw = sorted(r["sw1"] for r in rows.values())
    assert sw[0] == rows["(a)"]["sw1"] and min(np.diff(sw)) > 0.02
    assert all(r["sw1"] <= r["l_per"] for r in rows.values())


def test_figure_has_four_panels_with_points_and_arrows_and_a_table():
    fig = figure1(n=300, n_projections=32, arrows=20)
    scatter_axes = [ax for ax in fig.axes if ax.collections]
    assert len(scatter_axes) == 4
    for ax in scatter_axes:
        assert len(ax.collections) == 3  # points, PER arrows, exact-SW1 arrows
        assert len(ax.collections[0].get_offsets()) == 300
    assert any(ax.tables for ax in fig.axes)


def test_method_colours_are_fixed_and_unknown_methods_stable():
    assert method_color("per") == METHOD_COLORS["per"] != method_color("bn")
    assert method_color("my-method") == method_color("my-method")


def test_arrows_share_one_scale_per_field_across_the_panels():
    fig = figure1(n=300, n_projections=32, arrows=20)
    panels = [ax for ax in fig.axes if ax.collections]  # (a), (b), (c), (d)
    for field in (1, 2):  # PER arrows, exact-SW1 arrows
        lengths = [np.hypot(ax.collections[field].U, ax.collections[field].V) for ax in panels]
        np.testing.assert_allclose(max(float(a.max()) for a in lengths), 0.6)  # the longest over all panels
    exact = [np.hypot(ax.collections[2].U, ax.collections[2].V) for ax in panels]
    push = [np.hypot(ax.collections[2].U.mean(), ax.collections[2].V.mean()) for ax in panels]
    largest = int(np.argmax([a.max() for a in exact]))
    assert largest != 0 and exact[0].max() < exact[largest].max()  # (a)'s arrows are not scaled up to full length
    assert exact[0].mean() < 0.8 * exact[2].mean()  # the exact field pushes the skewed (c) harder than (a)
    assert push[0] < 0.5 * push[2]  # and its net push in (a) is small
    assert "one length scale per colour" in " ".join(t.get_text() for t in fig.texts)


def test_the_captions_gradient_scales_are_of_the_same_mean_over_all_samples():
    # a review: PER's field was per_grad of the picked rows alone (a mean over 20 rows, not 300), so the caption read
    # as PER pulling n / arrows times harder than the exact SW1 gradient, a mean over all rows
    import re

    fig = figure1(n=300, n_projections=32, arrows=20)
    text = " ".join(t.get_text() for t in fig.texts)
    found = re.findall(r"gradient norm ([0-9.e+-]+) \(orange.*?, ([0-9.e+-]+) \(purple", text)
    per, exact = (float(v) for v in found[0])
    assert 0.3 < per / exact < 3, text
