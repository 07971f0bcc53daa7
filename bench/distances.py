"""Goal 4: the analysis distances to N(0, 1) / N(0, I), closed form against POT's sampling approach.

1. ``w1_to_normal(x)`` (exact: sort + the Gaussian quantile integral) against POT's way, which needs
   Gaussian *samples*: ``ot.wasserstein_1d(x, z, p=1)`` with z = m draws of N(0, 1).
2. ``sliced_w1_to_normal(X, projections=P)`` (exact on every slice) against
   ``ot.sliced_wasserstein_distance(X, Z, projections=P.T, p=1)`` with Z = m draws of N(0, I) and the
   same slices, so the only difference is the sampling of the Gaussian.

The truth is the closed form (``w1_to_normal`` is exact up to about n * machine epsilon), so POT's
error is measured directly: the mean absolute relative error over a few seeds of z. For every m the
line ``distances/<which>/pot_m<m> RATIO`` is time(POT) / time(closed form), the two interleaved at that
m (median of the paired ratios, :func:`bench.timing.interleaved`), with POT's relative error in the
context; then ``.../error_at_equal_time`` gives POT's relative error at the m whose time equals
the closed form's (interpolated in log-log), and ``.../time_at_equal_error`` the time ratio POT needs
to reach a relative error of 1e-3 (interpolated, or extrapolated with the fitted m^-1/2 law when the
largest m tried is not enough; the closed form's own error is ~1e-12).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import numpy as np

from bench.timing import emit, interleaved, progress, quiet_wait, standalone_parser

__all__ = ["run"]

TARGET_ERROR = 1e-3


def _loglog_at(xs: list[float], ys: list[float], x: float) -> float:
    """Interpolate y at x in log-log coordinates (linear extrapolation at the ends)."""
    lx, ly = np.log(xs), np.log(ys)
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        i = int(np.searchsorted(xs, x)) - 1
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
    return float(np.exp(ly[i] + slope * (math.log(x) - lx[i])))


def _study(
    name: str,
    exact: Callable[[], float],
    pot: Callable[[int, int], float],
    ms: list[int],
    seeds: int,
    reps: int,
    wait: float,
) -> list[str]:
    truth = exact()
    lines, errs, ratios = [], [], []
    for m in ms:
        err = statistics.mean(abs(pot(m, seed) / truth - 1.0) for seed in range(seeds))
        # side by side at every m: the paired ratio of POT's call and the closed form's in the same round
        t = interleaved({"closed_form": exact, "pot": lambda m=m: pot(m, 10_000)}, repeats=reps, quiet_wait=wait)
        errs.append(err)
        ratios.append(t.ratio("pot", "closed_form"))
        lines.append(
            emit(
                f"distances/{name}/pot_m{m}",
                ratios[-1],
                what="time_POT/time_closed_form",
                pot_rel_error=err,
                closed_form_ms=1e3 * t.median("closed_form"),
                pot_ms=1e3 * t.median("pot"),
                truth=truth,
                repeats=reps,
            )
        )
    # POT's error at the m where its time equals the closed form's (time ratio 1)
    if ratios[0] >= 1.0 or len(ms) == 1:  # POT is slower even with the fewest samples tried
        lines.append(
            emit(
                f"distances/{name}/error_at_equal_time",
                errs[0],
                what="POT_rel_error_at_its_smallest_m",
                m=ms[0],
                note=f"POT_already_{ratios[0]:.3g}x_slower_there",
            )
        )
    else:
        m_eq = _loglog_at(ratios, [float(m) for m in ms], 1.0)
        err_eq = _loglog_at([float(m) for m in ms], errs, m_eq)
        lines.append(emit(f"distances/{name}/error_at_equal_time", err_eq, what="POT_rel_error", m=round(m_eq)))
    # the time POT needs for TARGET_ERROR: errors fall like m^-1/2 (Monte Carlo), fitted on the last points
    c = statistics.median(e * math.sqrt(m) for e, m in zip(errs[-3:], ms[-3:], strict=False))
    m_need = (c / TARGET_ERROR) ** 2
    t_need = _loglog_at([float(m) for m in ms], ratios, m_need) if len(ms) > 1 else math.inf
    lines.append(
        emit(
            f"distances/{name}/time_at_equal_error",
            t_need,
            what=f"time_POT/time_closed_form_at_rel_error_{TARGET_ERROR:g}",
            m_needed=f"{m_need:.3g}",
            extrapolated=m_need > ms[-1],
        )
    )
    return lines


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Both studies; returns the printed result lines."""
    import ot
    import torch

    from analysis.distances import sliced_w1_to_normal, w1_to_normal
    from per_core.per import sample_slices

    rng = np.random.default_rng(0)
    lines = []
    n = 2_000 if quick else 10_000
    x = rng.gamma(2.0, 0.7, size=n) - 1.0  # skewed, not Gaussian
    progress(f"distances 1/2: w1_to_normal on {n} values vs ot.wasserstein_1d against m Gaussian samples")

    def pot_1d(m: int, seed: int) -> float:
        z = np.random.default_rng([1, seed]).standard_normal(m)  # never the stream that drew x
        return float(ot.wasserstein_1d(x, z, p=1))

    ms_1d = [1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000]
    wait = quiet_wait(quick, device)
    lines += _study(
        "w1_to_normal",
        lambda: w1_to_normal(x),
        pot_1d,
        ms_1d,
        seeds=2 if quick else 5,
        reps=3 if quick else 9,
        wait=wait,
    )

    n2, d = (500, 8) if quick else (2_000, 16)
    slices = 32 if quick else 128
    a = rng.normal(size=(n2, d))
    X = a @ rng.normal(size=(d, d)) / math.sqrt(d) + 0.3 * np.abs(a)  # correlated and skewed
    P = sample_slices(slices, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()  # (s, d)
    progress(f"distances 2/2: sliced_w1_to_normal on {n2}x{d}, {slices} slices vs ot.sliced_wasserstein_distance")

    def pot_sliced(m: int, seed: int) -> float:
        Z = np.random.default_rng([1, seed]).standard_normal((m, d))
        return float(ot.sliced_wasserstein_distance(X, Z, projections=np.ascontiguousarray(P.T), p=1))

    ms_sl = [500, 2_000] if quick else [1_000, 10_000, 100_000]
    lines += _study(
        "sliced_w1_to_normal",
        lambda: sliced_w1_to_normal(X, projections=P),
        pot_sliced,
        ms_sl,
        seeds=2 if quick else 3,
        reps=3 if quick else 5,
        wait=wait,
    )
    return lines


def main() -> None:
    run(standalone_parser(__doc__).parse_args().quick)


if __name__ == "__main__":
    main()
