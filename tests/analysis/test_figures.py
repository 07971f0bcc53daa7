"""make figures: the theory figures and the run-based ones are written, and the trap is what it claims."""

import math

import numpy as np

from analysis.figures import main, point_mass_trap


def test_point_mass_trap_shows_the_bound_falling_while_the_distance_rises():
    fig = point_mass_trap(n=400, dim=3, n_projections=32, steps=7)
    sw, lp = (line.get_ydata() for line in fig.axes[0].get_lines()[:2])
    scales = fig.axes[0].get_lines()[0].get_xdata()
    assert np.argmin(sw) == np.argmin(np.abs(scales - 1.0))  # the true distance is smallest at N(0, I)
    assert np.all(np.diff(lp) > 0) and math.isclose(lp[0], math.sqrt(2 / math.pi))  # the bound is smallest at 0
    assert sw[0] > sw[np.argmin(np.abs(scales - 1.0))] + 0.5


def test_cli_writes_the_theory_figures(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["figure1.png", "point_mass_trap.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in ("figure1.png", "point_mass_trap.png"))
    assert main(["--out", str(tmp_path), "--runs", str(tmp_path / "missing")]) == 2
