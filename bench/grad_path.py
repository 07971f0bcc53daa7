"""Goal 2: the Algorithm-1 gradient path (``per_grad``) against autograd of ``per_loss``: time and memory.

Both compute the same gradient (``tests/per_core/test_per.py`` checks equality to 1e-10). Algorithm 1
evaluates erf once per (rows x slices) element and keeps one reusable (chunk x slices) block; autograd
of the chunked closed form must keep every chunk's projections and intermediates for its backward,
so its memory grows with rows x slices.

Lines: ``grad_path/speedup/<case>`` = time(autograd: per_loss + backward) / time(per_grad), and the
same with the loss (``per_grad`` does not compute it; the ``track_penalty`` path computes both from one
erf); ``grad_path/memory/<case>`` = peak extra bytes of autograd / of Algorithm 1 (see
:mod:`bench.memory`), with Algorithm 1's bytes beyond its output compared with one chunk block
(plus the two scaled copies of the s x d slices, ``theta / sqrt 2`` and ``theta / (N s)``).
When d is large (the LSTM's 650) both paths are dominated by the same two (rows x d x s) matmuls,
so the speedup there is small; it is the erf/exp elementwise work, rows x s, that autograd repeats.
"""

from __future__ import annotations

import torch

from bench import memory
from bench.timing import emit, interleaved, progress, quiet_wait, standalone_parser, sync
from per_core.per import DEFAULT_CHUNK_ELEMENTS, grad_and_loss, per_grad, per_loss, sample_slices

__all__ = ["CASES", "memory_setup", "run"]

#: (label, rows, dim): the row matrices PER sees in the paper's models.
CASES = [
    ("resnet56_stage1_all_locations", 131072, 16),  # 128 x 32 x 32 locations of 16 channels
    ("resnet56_stage3_all_locations", 8192, 64),
    ("resnet56_stage1_m16", 2048, 16),  # locations=16 per image
    ("cnn11_layer3_all_locations", 64000, 240),  # 250 x 16 x 16 locations of 240 channels
    ("lstm_650", 700, 650),  # bptt 35 x batch 20 time steps of 650 units
]
QUICK_CASES = [("small", 2048, 16), ("lstm_like", 70, 65)]


def _inputs(n: int, d: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(n, d, generator=g) * 1.5 + 0.2).to(device)
    return h, sample_slices(256, d, generator=g).to(device)


def _autograd(h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    x = h.detach().requires_grad_()
    per_loss(x, theta=theta).backward()
    return x.grad


def memory_setup(path: str, n: str, d: str, device: str = "cpu"):
    """The call whose peak memory :func:`bench.memory.measure` takes (string arguments: it runs in a child)."""
    h, theta = _inputs(int(n), int(d), device)
    if path == "algorithm1":
        return lambda: per_grad(h, theta=theta)
    return lambda: _autograd(h, theta)


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """Time and memory ratios for every case; returns the printed result lines."""
    lines = []
    for label, n, d in QUICK_CASES if quick else CASES:
        progress(f"grad_path {label}: rows {n} x dim {d}, 256 slices")
        h, theta = _inputs(n, d, device)

        def timed(fn):
            def call() -> None:
                fn()
                sync(device)

            return call

        fns = {
            "algorithm1": timed(lambda h=h, theta=theta: per_grad(h, theta=theta)),
            "algorithm1_with_loss": timed(
                lambda h=h, theta=theta: grad_and_loss(h, theta, True, DEFAULT_CHUNK_ELEMENTS)
            ),
            "autograd": timed(lambda h=h, theta=theta: _autograd(h, theta)),
        }
        reps = 3 if quick else (5 if n * d > 5e6 else 11)
        t = interleaved(fns, repeats=reps, warmup=1, quiet_wait=quiet_wait(quick, device))
        ms = {k: 1e3 * t.median(k) for k in fns}
        lines.append(
            emit(
                f"grad_path/speedup/{label}",
                t.ratio("autograd", "algorithm1"),
                what="time_autograd_per_loss/time_per_grad",
                rows=n,
                dim=d,
                algorithm1_ms=ms["algorithm1"],
                autograd_ms=ms["autograd"],
                device=device,
            )
        )
        lines.append(
            emit(
                f"grad_path/speedup_with_loss/{label}",
                t.ratio("autograd", "algorithm1_with_loss"),
                what="time_autograd_per_loss/time_algorithm1_grad_and_loss",
                algorithm1_with_loss_ms=ms["algorithm1_with_loss"],
            )
        )
        if (not device.startswith("cuda") and not memory.available()) or (quick and label != QUICK_CASES[0][0]):
            continue
        peaks = {  # quick: one child (algorithm1) keeps the subprocess path alive, the other in-process
            p: memory.measure(
                "bench.grad_path:memory_setup", p, str(n), str(d), device, device=device, in_process=quick and i > 0
            )
            for i, p in enumerate(("algorithm1", "autograd"))
        }
        if None in peaks.values():
            continue
        a1, ag = peaks["algorithm1"]["peak_extra"], peaks["autograd"]["peak_extra"]
        out_bytes = n * d * 4
        chunk_bytes = min(n, DEFAULT_CHUNK_ELEMENTS // 256) * 256 * 4
        lines.append(
            emit(
                f"grad_path/memory/{label}",
                ag / max(a1, 1.0),
                what="peak_extra_bytes_autograd/algorithm1",
                algorithm1_MiB=a1 / 2**20,
                autograd_MiB=ag / 2**20,
                algorithm1_beyond_output_MiB=(a1 - out_bytes) / 2**20,
                one_chunk_MiB=chunk_bytes / 2**20,
                two_scaled_slice_copies_MiB=2 * 256 * d * 4 / 2**20,
                device=device,
            )
        )
    return lines


def main() -> None:
    p = standalone_parser(__doc__, device=True)
    args = p.parse_args()
    run(args.quick, args.device)


if __name__ == "__main__":
    main()
