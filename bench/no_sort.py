r"""Goal 3, the "no sort" claim: PER's gradient against the exact sliced-W1 gradient, which needs a sort.

Both use the same s = 256 slices on rows of dimension d = 64, for 1e3 to 1e6 rows:

- PER (Algorithm 1, :func:`per_core.per.per_grad`): two matmuls and one erf per (row, slice);
- the exact gradient of :math:`SW_1(\nu, \mathcal{N}(0, I))` (the math of
  :func:`analysis.distances.sliced_w1_to_normal_grad`, here in torch): project, ``torch.sort`` each
  slice, clip every sorted value to its rank's Gaussian quantile step and take
  :math:`2\Phi(t) - (2r+1)/n`, scatter back to row order, one matmul. Slices are processed in chunks
  so that one (rows x slices) block stays under 2^24 elements.

They are not the same quantity: PER's is the gradient of an upper bound (no interaction between
rows), the sort path is the gradient of the distance itself (rows coupled through their ranks).
The line ``no_sort/<rows> RATIO`` is time(sort path) / time(PER), the two interleaved after a warm-up
round at every size (:func:`bench.timing.interleaved`): above 1, PER is faster.
The curve is drawn to ``figures/no_sort.png``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.timing import emit, interleaved, progress, quiet_wait, standalone_parser, sync
from per_core.per import per_grad, sample_slices

__all__ = ["ROWS", "plot", "run", "sw1_grad_sort"]

ROWS = [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
QUICK_ROWS = [300, 1_000]
DIM, SLICES = 64, 256
FIGURE = Path(__file__).resolve().parent.parent / "figures" / "no_sort.png"


def sw1_grad_sort(x: torch.Tensor, theta: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    r"""Exact gradient of the per-slice-exact :math:`SW_1` to :math:`\mathcal{N}(0, I)`, by sorting each slice.

    Row i with rank r in slice j contributes :math:`(2\Phi(t_{ij}) - (2r+1)/n)\,\theta_j / s` with
    :math:`t_{ij}` the projection clipped to :math:`[\Phi^{-1}(r/n), \Phi^{-1}((r+1)/n)]` (see
    ``analysis.distances.sliced_w1_to_normal_grad``).
    """
    n, s = x.shape[0], theta.shape[0]
    r = torch.arange(n + 1, device=x.device, dtype=torch.float64) / n
    q = torch.special.ndtri(r).to(x.dtype)  # Gaussian quantiles of the rank steps, q[0] = -inf, q[n] = inf
    lo, hi = q[:-1], q[1:]
    mid = (r[:-1] + r[1:]).to(x.dtype)  # (2r + 1) / n
    grad = torch.zeros_like(x)
    cols = max(1, chunk_elements // n)
    for j in range(0, s, cols):
        th = theta[j : j + cols]  # (c, d)
        proj = th @ x.T  # (c, n): each slice contiguous, so the sort runs along memory
        xs, order = torch.sort(proj, dim=1)
        d_sorted = 2.0 * torch.special.ndtr(torch.clamp(xs, lo, hi)) - mid
        d = torch.empty_like(d_sorted).scatter_(1, order, d_sorted)  # back to row order
        grad += d.T @ th  # (n, c) @ (c, d)
    return grad / s


def check_against_numpy() -> float:
    """Max relative difference between :func:`sw1_grad_sort` and ``analysis.distances.sliced_w1_to_normal_grad``."""
    from analysis.distances import sliced_w1_to_normal_grad

    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64) * 1.3 + 0.2
    theta = sample_slices(32, 8, generator=g, dtype=torch.float64)
    ref = sliced_w1_to_normal_grad(x.numpy(), projections=theta.numpy())
    got = sw1_grad_sort(x, theta).numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def plot(rows: list[int], ratios: list[float], per_ms: list[float], sort_ms: list[float], path: Path) -> None:
    """The ratio curve (left axis) and both times (right axis) against the number of rows; a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(rows, ratios, "o-", color="C3", label="sort / PER (left)")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"rows (d = {DIM}, s = {SLICES} slices)")
    ax.set_ylabel("time ratio sort / PER")
    ax2 = ax.twinx()
    ax2.plot(rows, per_ms, "s--", color="C0", ms=3, lw=1, label="PER ms (right)")
    ax2.plot(rows, sort_ms, "^--", color="C1", ms=3, lw=1, label="sort ms (right)")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per gradient")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax.set_title("PER gradient vs exact sliced-W1 gradient (sort)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(quick: bool = False, device: str = "cpu", figure: Path | None = None) -> list[str]:
    """The ratio per row count and the plot (to a temporary file in quick mode); returns the result lines."""
    err = check_against_numpy()
    lines = [emit("no_sort/check_sort_grad_vs_numpy", err, what="max_rel_diff_float64")]
    rows_list = QUICK_ROWS if quick else ROWS
    ratios, per_ms, sort_ms = [], [], []
    g = torch.Generator().manual_seed(0)
    for n in rows_list:
        progress(f"no_sort rows {n}")
        x = (torch.randn(n, DIM, generator=g) * 1.2 + 0.1).to(device)
        theta = sample_slices(SLICES, DIM, generator=g).to(device)
        fns = {
            "per": lambda x=x, theta=theta: (per_grad(x, theta=theta), sync(device)),
            "sort": lambda x=x, theta=theta: (sw1_grad_sort(x, theta), sync(device)),
        }
        reps = 3 if quick else max(2, min(11, int(3e6 / n)))
        t = interleaved(fns, repeats=reps, warmup=1, quiet_wait=quiet_wait(quick, device))
        ratios.append(t.ratio("sort", "per"))
        per_ms.append(1e3 * t.median("per"))
        sort_ms.append(1e3 * t.median("sort"))
        lines.append(
            emit(
                f"no_sort/{n}",
                ratios[-1],
                what="time_sort/time_PER",
                per_ms=per_ms[-1],
                sort_ms=sort_ms[-1],
                per_ns_per_row=1e6 * per_ms[-1] / n,
                sort_ns_per_row=1e6 * sort_ms[-1] / n,
                repeats=reps,
                device=device,
            )
        )
    if figure is None and (quick or device != "cpu"):  # figures/no_sort.png is the CPU curve
        with tempfile.TemporaryDirectory() as tmp:
            plot(rows_list, ratios, per_ms, sort_ms, Path(tmp) / "no_sort.png")
    else:
        plot(rows_list, ratios, per_ms, sort_ms, figure or FIGURE)
        progress(f"no_sort plot written to {figure or FIGURE}")
    slope = math.log(sort_ms[-1] / sort_ms[0]) / math.log(rows_list[-1] / rows_list[0])
    progress(f"no_sort: sort-path time grows like rows^{slope:.2f} over the range")
    return lines


def main() -> None:
    p = standalone_parser(__doc__, device=True)
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args()
    run(args.quick, args.device, args.figure)


if __name__ == "__main__":
    main()
