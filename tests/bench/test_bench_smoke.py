"""Every benchmark runs end to end in its tiny ``--quick`` mode, so that none of them rots.

No timing is asserted (timings belong in bench/RESULTS.md, measured as interleaved ratios); the
checks are that each benchmark finishes and prints well-formed ``NAME RATIO`` lines.
"""

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import BENCHMARKS  # noqa: E402


def _check_line(line: str) -> None:
    name, ratio, *context = line.split()
    assert "/" in name or name == "plot_scaling", line
    if ratio == "SKIPPED":
        return
    value = float(ratio)
    assert math.isfinite(value) or name.endswith("time_at_equal_error"), line
    for item in context:
        assert "=" in item, line


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine, every 2-thread op can wait milliseconds for its second
    thread to be scheduled, which would make the smoke run 10x slower without testing anything more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_in_quick_mode(name, capsys, one_thread):
    module = importlib.import_module(f"bench.{name}")
    lines = module.run(quick=True, device="cpu")
    assert lines, f"bench.{name} printed no result line"
    for line in lines:
        _check_line(line)
    out = capsys.readouterr().out.splitlines()
    assert all(line in out for line in lines)
    # besides the result lines, only '#' progress lines: the results stay easy to grep (sw1_demo printed 90 epoch lines)
    assert [line for line in out if line not in lines and not line.startswith("# [")] == []


def test_main_lists_every_module_and_rejects_unknown_names():
    from bench.__main__ import main

    for name in BENCHMARKS:
        assert (ROOT / "bench" / f"{name}.py").exists()
    with pytest.raises(SystemExit):
        main(["--only", "no_such_benchmark"])


def test_no_sort_torch_gradient_matches_the_numpy_reference():
    from bench.no_sort import check_against_numpy

    assert check_against_numpy() < 1e-10


def test_short_calls_have_no_measured_load_and_do_not_filter_rounds():
    # a review: /proc/stat counts 10 ms ticks, so a 3 ms call crossing one tick read as over half a core busy with
    # nothing else running; the quiet-round filter then kept rounds by the calls' own lengths (ratio 2.67 for 1.00)
    import math

    from bench.timing import DISTURBED, Timings, interleaved

    t = interleaved({"a": lambda: None, "b": lambda: sum(range(1000))}, repeats=5, warmup=1, quiet_wait=0)
    assert all(math.isnan(v) for vs in t.external.values() for v in vs)
    assert t.quiet_rounds("b", "a") == 5
    fake = Timings(
        {"a": [1.0] * 4, "b": [1.0, 3.0, 1.0, 1.0]},
        {"a": [1.0] * 4, "b": [1.0] * 4},
        {"a": [math.nan] * 4, "b": [0.0, DISTURBED, math.nan, 0.1]},
    )
    assert fake.quiet_rounds("b", "a") == 3 and fake.ratio("b", "a") == 1.0  # the disturbed round left out
    assert fake.external_load() == 0.1  # the median of the measured calls only (0.0, 0.5, 0.1)


def test_step_graph_logic_runs_with_the_capture_faked(monkeypatch, one_thread):
    # step_graph needs CUDA, so its quick run above is one SKIPPED line; its timing and reporting code would
    # otherwise first run on a lent GPU, with minutes to spare: here the capture is replaced by the eager step
    import bench.step_graph as sg

    real = sg.make_step
    monkeypatch.setattr(sg, "make_step", lambda shape, sync=True, device="cpu", **kw: real(shape, device="cpu", **kw))
    monkeypatch.setattr(sg, "graphed", lambda step, per, device: step)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    lines = sg.run(quick=True, device="cuda", models=("resnet56",))
    names = ["step_graph/resnet56/bn", "step_graph/resnet56/per", "step_graph/resnet56/per_all"]
    assert [line.split()[0] for line in lines] == [*names, "step_graph/resnet56/per_vs_bn"]
    for line in lines[:-1]:
        _check_line(line)
        context = dict(item.split("=", 1) for item in line.split()[2:])
        assert {"eager_ratio", "graph_speedup", "vanilla_graph_ms", "vanilla_eager_ms"} <= context.keys()
        assert 0.2 < float(context["graph_speedup"]) < 5  # the same step timed twice in one interleaving


def test_step_graph_replay_keeps_the_captured_step_alive(monkeypatch):
    # a CUDA graph holds raw addresses, not tensors: on the first GPU run (H200, G3) the step's model, optimizer
    # state and inputs were freed once graphed() returned, and replays overwrote a target tensor (a device-side
    # assert in nll_loss). The CUDA calls are faked here; what is checked is who keeps the step's tensors.
    import contextlib
    import gc
    import weakref

    import bench.step_graph as sg

    class FakeCuda:
        def __init__(self, *args, **kwargs):
            self.replays = 0

        def wait_stream(self, other):
            pass

        def register_generator_state(self, gen):
            pass

        def replay(self):
            self.replays += 1

    monkeypatch.setattr(torch.cuda, "Stream", FakeCuda)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCuda)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeCuda())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    events = []

    @contextlib.contextmanager
    def capture(graph):
        events.append("capture")
        yield

    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    step, model, _ = sg.make_step(sg.SHAPES["resnet56"], "vanilla", quick=True, sync=False)
    model_alive = weakref.ref(model)
    replay = sg.graphed(step, None, "cuda")
    del step, model
    gc.collect()
    assert model_alive() is not None, "the graph's replay lets the captured model (and its tensors) be freed"
    replay()
    # with PER, its generators are registered with the graph before the capture
    from per_core.regularizer import PER

    monkeypatch.setattr(PER, "register_with_graph", lambda self, graph, device=None: events.append(graph))
    step, _, per = sg.make_step(sg.SHAPES["resnet56"], "per", quick=True, sync=False, locations=2)
    events.clear()
    sg.graphed(step, per, "cuda")
    assert len(events) == 2 and isinstance(events[0], FakeCuda) and events[1] == "capture"


def test_per_parts_floor_moves_what_pers_cpu_path_moves():
    # per_parts/floor claims to be the data movement of PER's sampled path and nothing else: m positions per
    # image, one in each of m equal strata, the same for every channel, and the output's values added there
    from torch import nn

    from bench.per_parts import _floor_hooks

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

        def pre_activations(self):
            return {"conv": self.conv}

    torch.manual_seed(0)
    net = Net()
    seen = {}
    net.conv.register_forward_hook(lambda mod, args, out: seen.update(out=out.detach().clone()))
    _floor_hooks(net, 4)
    x = torch.randn(5, 2, 4, 6, requires_grad=True)  # L = 24: 4 strata of 6 positions
    out = net(x)
    out.register_hook(lambda g: seen.update(grad=g.clone()))  # registered after the floor's hook: sees its result
    out.backward(torch.zeros_like(out))
    added = seen["grad"].flatten(2)  # (N, C, L): what the floor added to a zero gradient
    h = seen["out"].flatten(2)
    chosen = added != 0
    assert (chosen == chosen[:, :1]).all()  # the same positions in every channel
    assert (chosen.view(5, 3, 4, 6).sum(-1) == 1).all()  # one in each stratum, per image
    assert torch.equal(added[chosen], h[chosen])  # the output's own values
