"""Benchmarks of issue 7: every result is a ratio measured side by side in one process.

``python -m bench`` runs them all (``--quick`` for a smoke run, ``--only a,b`` for some, ``--device cuda``
for the GPU-capable ones); each prints ``NAME RATIO key=value ...`` lines. Results, machine and
commands are recorded in ``bench/RESULTS.md``.

Modules (one per goal of issue 7): :mod:`bench.step_time` (1), :mod:`bench.allocator` (1, in a
process per variant, with glibc malloc's defaults and tuned), :mod:`bench.per_parts` (1, where PER's
time goes inside the step), :mod:`bench.step_graph` (1 on a GPU,
the step captured in a CUDA graph), :mod:`bench.conv_design` (1, the conv
design study), :mod:`bench.sw1_demo` (1, the trained demo's SW1), :mod:`bench.grad_path` (2),
:mod:`bench.no_sort` (3), :mod:`bench.distances` (4), :mod:`bench.recorder` (5),
:mod:`bench.plot_scaling` (6); helpers :mod:`bench.timing`, :mod:`bench.memory`, :mod:`bench.common`.
"""

#: Every benchmark, in the order ``python -m bench`` runs them; each module has ``run(quick, device)``.
BENCHMARKS = (
    "step_time",
    "allocator",
    "per_parts",
    "step_graph",
    "grad_path",
    "conv_design",
    "no_sort",
    "distances",
    "recorder",
    "sw1_demo",
    "plot_scaling",
)
#: Those that also run on CUDA (the others are CPU studies and skip themselves there).
GPU_BENCHMARKS = ("step_time", "step_graph", "grad_path", "no_sort")
