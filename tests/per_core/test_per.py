"""The PER core against independent references: quadrature, Monte Carlo and autograd."""

import itertools
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from torch import nn

from per_core import PER, as_samples, folded_normal_mean, from_samples, per_grad, per_loss, sample_slices

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quad_abs_dev(a: float) -> float:
    """E|Z - a| for Z ~ N(0,1) by numerical quadrature, independent of the closed form.

    The real line is cut at 0 (the density's peak) and at a (the kink) so that no piece hides either.
    """
    cuts = [-np.inf, min(0.0, a), max(0.0, a), np.inf]
    return sum(
        integrate.quad(lambda z: abs(z - a) * stats.norm.pdf(z), lo, hi, limit=200)[0]
        for lo, hi in itertools.pairwise(cuts)
    )


@given(st.floats(-30, 30))
@settings(max_examples=40, deadline=None)
def test_folded_normal_mean_matches_quadrature(a):
    got = float(folded_normal_mean(torch.tensor(a, dtype=F64)))
    assert got == pytest.approx(quad_abs_dev(a), rel=1e-7, abs=1e-9)


def test_reference_values_from_the_paper():
    # point mass at 0: sqrt(2/pi); N(0, I) itself: 2/sqrt(pi) (for every direction, <h, theta> ~ N(0,1))
    assert float(per_loss(torch.zeros(3, 5, dtype=F64), 8, gen())) == pytest.approx(math.sqrt(2 / math.pi))
    h = torch.randn(200_000, 3, generator=gen(1), dtype=F64)
    assert float(per_loss(h, 64, gen(2))) == pytest.approx(2 / math.sqrt(math.pi), abs=5e-3)


def test_per_loss_matches_monte_carlo_over_z_and_quadrature():
    h = torch.randn(7, 4, generator=gen(3), dtype=F64) * 2 + 0.5
    theta = sample_slices(16, 4, generator=gen(4), dtype=F64)
    a = (h @ theta.T).flatten()
    # Monte Carlo of E|Z - a| with Z drawn independently
    z = torch.randn(200_000, generator=gen(5), dtype=F64)
    per_a = (z[:, None] - a[None, :]).abs().mean(0)
    mc, se = float(per_a.mean()), float((z[:, None] - a[None, :]).abs().mean(1).std() / math.sqrt(len(z)))
    got = float(per_loss(h, theta=theta))
    assert abs(got - mc) < 5 * se
    assert got == pytest.approx(np.mean([quad_abs_dev(float(v)) for v in a]), rel=1e-8)


def test_slices_are_uniform_on_the_sphere():
    theta = sample_slices(20_000, 3, generator=gen(6), dtype=F64)
    assert torch.allclose(theta.norm(dim=1), torch.ones(20_000, dtype=F64))
    # uniform on S^2: each coordinate is U(-1, 1) (Archimedes); KS test against it
    assert stats.kstest(theta[:, 0].numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3


@given(
    n=st.integers(1, 40),
    d=st.integers(1, 12),
    s=st.integers(1, 50),
    scale=st.floats(0.01, 20),
    seed=st.integers(0, 99),
)
@settings(max_examples=60, deadline=None)
def test_per_grad_equals_autograd_of_per_loss(n, d, s, scale, seed):
    h = (torch.randn(n, d, generator=gen(seed), dtype=F64) * scale).requires_grad_()
    theta = sample_slices(s, d, generator=gen(seed + 1), dtype=F64)
    per_loss(h, theta=theta).backward()
    torch.testing.assert_close(per_grad(h, theta=theta), h.grad, rtol=1e-10, atol=1e-13)


@given(
    n=st.integers(1, 30),
    d=st.integers(1, 8),
    log_scale=st.floats(-30, 300),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, F64]),
    seed=st.integers(0, 99),
)
@settings(max_examples=80, deadline=None)
def test_loss_and_gradient_stay_finite_and_within_their_bounds_at_any_magnitude(n, d, log_scale, dtype, seed):
    # Any magnitude up to 1e300 that the dtype can hold (float16 saturates to its max) and whose N x s
    # terms sum within the compute dtype: no overflow in the erf/exp paths (beyond that, per_loss raises).
    compute_max = float(torch.finfo(F64 if dtype == F64 else torch.float32).max)
    scale = min(10.0**log_scale, float(torch.finfo(dtype).max) / 10, compute_max / (10 * n * 16 * math.sqrt(d)))
    h = (torch.randn(n, d, generator=gen(seed), dtype=F64) * scale).clamp(-scale, scale).to(dtype)
    theta = sample_slices(16, d, generator=gen(seed + 1), dtype=F64 if dtype == F64 else torch.float32)
    loss, grad = per_loss(h, theta=theta), per_grad(h, theta=theta)
    a = (h.to(theta.dtype) @ theta.T).abs().mean()
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # E|Z - a| >= max(E|Z|, |a|) (symmetry, Jensen), and |dL/dh_i| <= 1/N since |erf| <= 1 and |theta| = 1
    assert loss >= max(math.sqrt(2 / math.pi), float(a)) * (1 - 1e-5)
    assert float(grad.float().norm(dim=1).max()) <= (1 + 1e-2) / n


def test_same_generator_state_gives_same_slices_and_chunking_changes_nothing():
    h = torch.randn(300, 6, generator=gen(7), dtype=F64)
    assert torch.equal(per_grad(h, 32, gen(8)), per_grad(h, 32, gen(8)))
    torch.testing.assert_close(per_grad(h, 32, gen(8), chunk_elements=40), per_grad(h, 32, gen(8)))
    torch.testing.assert_close(per_loss(h, 32, gen(8), chunk_elements=40), per_loss(h, 32, gen(8)))
    assert not torch.equal(per_grad(h, 32, gen(8)), per_grad(h, 32, gen(9)))


def test_half_precision_is_computed_in_float32():
    h = torch.randn(64, 8, generator=gen(10))
    for dt in (torch.float16, torch.bfloat16):
        g = per_grad(h.to(dt), 32, gen(11))
        assert g.dtype == dt
        torch.testing.assert_close(g.float(), per_grad(h.to(dt).float(), 32, gen(11)), rtol=2e-2, atol=1e-4)
    assert per_loss(h.half(), 8, gen(1)).dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "layout", "rows"),
    [
        ((8, 5), "auto", (8, 5)),
        ((4, 3, 6, 7), "auto", (4 * 6 * 7, 3)),  # conv2d: every location a sample of C channels
        ((4, 3, 2, 6, 7), "auto", (4 * 2 * 6 * 7, 3)),  # conv3d
        ((4, 3, 9), "channels_first", (4 * 9, 3)),  # conv1d
        ((35, 20, 11), "auto", (35 * 20, 11)),  # LSTM (T, N, H)
    ],
)
def test_as_samples_shapes_and_round_trip(shape, layout, rows):
    h = torch.randn(*shape, generator=gen(12))
    r = as_samples(h, layout)
    assert tuple(r.shape) == rows
    assert torch.equal(from_samples(r, h.shape, layout), h)


def test_as_samples_rows_are_channel_vectors_at_one_location():
    h = torch.randn(2, 3, 4, 5, generator=gen(13))
    r = as_samples(h)
    # row for image 1, location (2, 3) holds that location's 3 channels
    assert torch.equal(r[1 * 20 + 2 * 5 + 3], h[1, :, 2, 3])


class ThreeLayer(nn.Module):
    """Linear -> conv -> LSTM so that one test covers every kind of layer PER attaches to."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2 * 4 * 4)
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.lstm = nn.LSTM(5, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x, capture=None):
        a = self.fc(x)  # (N, 32)
        b = self.conv(torch.tanh(a).view(-1, 2, 4, 4))  # (N, 5, 4, 4)
        seq = torch.relu(b).flatten(2).permute(2, 0, 1)  # (T=16, N, 5)
        c, _ = self.lstm(seq)  # (T, N, 7)
        if capture is not None:
            capture.extend([a, b, c])
        return self.head(c[-1])


def _param_grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_attached_per_equals_autograd_of_loss_plus_lam_per_loss_with_same_slices():
    torch.manual_seed(0)
    model = ThreeLayer().double()
    x, y = torch.randn(9, 6, dtype=F64), torch.randint(0, 3, (9,))
    lam, s, seed = 0.37, 24, 5

    with PER([model.fc, model.conv, model.lstm], lam, s, seed=seed):
        nn.functional.cross_entropy(model(x), y).backward()
    got = _param_grads(model)
    model.zero_grad()

    g = gen(seed)  # the slices PER drew, in forward order
    thetas = [sample_slices(s, d, generator=g, dtype=F64) for d in (32, 5, 7)]
    acts = []
    loss = nn.functional.cross_entropy(model(x, acts), y)
    loss = loss + lam * sum(per_loss(as_samples(h), theta=t) for h, t in zip(acts, thetas, strict=True))
    loss.backward()
    for a, b in zip(got, _param_grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_removing_per_restores_vanilla_gradients_bit_for_bit_and_adds_no_parameters():
    torch.manual_seed(1)
    model = ThreeLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    nn.functional.cross_entropy(model(x), y).backward()
    vanilla = _param_grads(model)
    model.zero_grad()

    per = PER([model.fc, model.conv, model.lstm], 0.5)
    assert list(model.state_dict()) == list(before) and sum(1 for _ in model.buffers()) == 0
    nn.functional.cross_entropy(model(x), y).backward()
    assert any(not torch.equal(a, b) for a, b in zip(vanilla, _param_grads(model), strict=True))
    model.zero_grad()
    per.remove()
    nn.functional.cross_entropy(model(x), y).backward()
    for a, b in zip(vanilla, _param_grads(model), strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_context_manager_removes_hooks_even_on_error():
    model = nn.Linear(3, 3)
    with pytest.raises(ZeroDivisionError), PER(model, 1.0):
        1 / 0  # noqa: B018
    assert not model._forward_hooks


def test_tracked_penalty_equals_per_loss_with_the_same_slices():
    model = nn.Sequential(nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 1)).double()
    x = torch.randn(20, 4, dtype=F64)
    with PER({"fc0": model[0]}, 1e-2, 16, seed=3, track_penalty=True) as per:
        model(x).sum().backward()
        got = per.penalty(per_layer=True)
    theta = sample_slices(16, 6, generator=gen(3), dtype=F64)
    assert got["fc0"] == pytest.approx(float(per_loss(model[0](x).detach(), theta=theta)), rel=1e-12)


@pytest.mark.parametrize("locations", [None, 2])
def test_a_module_called_twice_tracks_the_sum_of_its_calls_and_a_new_backward_starts_over(locations):
    # weight sharing: both calls get PER's gradient, so the penalty is the sum of both calls' L_per
    # (before: the last call's only); slices are drawn per call in forward order
    conv, other = nn.Conv2d(2, 3, 3, padding=1).double(), nn.Conv2d(3, 3, 1).double()
    x = torch.randn(4, 2, 5, 5, generator=gen(40), dtype=F64)
    with PER({"conv": conv, "other": other}, 0.5, 8, seed=6, locations=locations, track_penalty=True) as per:
        a, b = conv(x), conv(0.5 * x)
        (other(a) + b).sum().backward()
        got = per.penalty(per_layer=True)
        rows = [as_samples(t.detach()) for t in (a, b, other(a))]  # other(a) again: hooks draw nothing outside grad
    g = gen(6)
    if locations is None:  # slices drawn per call in the backward hooks, in forward order (a, b, other)
        want = [float(per_loss(r, theta=sample_slices(8, 3, generator=g, dtype=F64))) for r in rows]
    else:  # locations drawn per call in forward order, then one (3, s, d) draw for the three equal-shape calls
        maps = [t.detach().flatten(2) for t in (a, b, other(a))]
        idx = [per._pick_locations(f, g) for f in maps]
        theta = sample_slices(3 * 8, 3, generator=g, dtype=F64).view(3, 8, 3)
        picked = [
            f.gather(2, i[:, None, :].expand(-1, 3, -1)).transpose(1, 2).reshape(-1, 3)
            for f, i in zip(maps, idx, strict=True)
        ]
        want = [float(per_loss(r, theta=t)) for r, t in zip(picked, theta, strict=True)]
    assert got["conv"] == pytest.approx(want[0] + want[1], rel=1e-12)
    assert got["other"] == pytest.approx(want[2], rel=1e-12)
    with PER({"conv": conv}, 0.5, 8, seed=6, locations=locations, track_penalty=True) as once:
        conv(x).sum().backward()
        first = once.penalty()
        conv(x).sum().backward()  # a new backward pass replaces, never adds to, the last one's penalty
        assert once.penalty() < 1.5 * first


def test_penalty_before_tracking_is_a_clear_error():
    per = PER(nn.Linear(2, 2), 0.1)
    with pytest.raises(RuntimeError, match="track_penalty=True"):
        per.penalty()


def test_no_work_without_grad_and_eval_forward_untouched():
    model = nn.Linear(3, 2)
    with PER(model, 1.0, track_penalty=True) as per, torch.no_grad():
        model(torch.randn(4, 3))
        assert not per._penalties


def test_subsampled_locations_are_an_unbiased_estimate_of_the_all_location_gradient():
    h0 = torch.randn(3, 4, 5, 5, generator=gen(14), dtype=F64) * 1.5 + 0.3
    layer = nn.Identity()
    reps, acc = 600, torch.zeros_like(h0)
    PER(layer, 1.0, 64, seed=0, locations=7)
    for _ in range(reps):
        h = h0.clone().requires_grad_()
        (layer(h) * 0).sum().backward()
        acc += h.grad
        # only 7 locations per image receive a gradient on each step
        assert int((h.grad.abs().sum(1) > 0).sum()) == 3 * 7
    ref = from_samples(per_grad(as_samples(h0), 20_000, gen(15)), h0.shape)
    rel = float((acc / reps - ref).norm() / ref.norm())
    assert rel < 0.08, rel


def test_in_place_modification_of_a_regularized_output_is_reported():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 1))
    with PER(model[0], 1.0), pytest.raises(RuntimeError, match="modified in place"):
        model(torch.randn(4, 3)).sum().backward()


def test_state_dict_resumes_the_same_slices():
    model = nn.Linear(3, 3)
    x = torch.randn(5, 3)
    per = PER(model, 1.0, 8, seed=2, track_penalty=True)
    model(x).sum().backward()
    state = per.state_dict()
    model(x).sum().backward()
    expected = per.penalty()
    per.remove()
    per2 = PER(model, 1.0, 8, seed=99, track_penalty=True)
    cpu = state["generators"]["cpu"]
    # a run saved on a GPU this process lacks resumes: those states are left out, the others restored
    per2.load_state_dict({**state, "generators": {"cuda:99": cpu, "mps:0": cpu, "cpu": cpu}})
    model(x).sum().backward()
    assert per2.penalty() == expected


def test_the_default_chunk_is_cache_sized_on_the_cpu_and_larger_on_accelerators():
    # on a GPU each block is a few kernel launches whatever its size: 2^22 puts a ResNet-56 stage in one block
    per = PER(nn.Linear(2, 2), 1.0)
    assert per.chunk_elements is None
    assert per._chunk(torch.device("cpu")) == 1 << 20
    assert per._chunk(torch.device("cuda", 0)) == per._chunk(torch.device("mps")) == 1 << 22
    assert PER(nn.Linear(2, 2), 1.0, chunk_elements=7)._chunk(torch.device("cuda", 0)) == 7


def test_the_hooks_use_the_devices_chunk(monkeypatch):
    import per_core.regularizer as reg

    chunks = []
    real = reg.grad_and_loss
    monkeypatch.setattr(reg, "grad_and_loss", lambda *a: chunks.append(a[3]) or real(*a))
    monkeypatch.setattr(PER, "_chunk", lambda self, device: 4096)
    for locations in (None, 2):  # Algorithm 1 on every location, and the batched sampled path
        conv = nn.Conv2d(2, 3, 3, padding=1)
        PER(conv, 1.0, 8, locations=locations)
        conv(torch.randn(4, 2, 5, 5)).sum().backward()
    assert chunks == [4096, 4096]
    # two sampled layers of equal shape share a block while it holds both: 4 x 2 rows x 8 slices each
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1))
    PER(list(net), 1.0, 8, locations=2)
    for chunk, calls in ((128, 1), (64, 2)):
        chunks.clear()
        monkeypatch.setattr(PER, "_chunk", lambda self, device, chunk=chunk: chunk)
        net(torch.randn(4, 3, 5, 5)).sum().backward()
        assert chunks == [chunk] * calls


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Conv2d(3, 4, 3, padding=1), (5, 3, 6, 8)),  # L = 48: equal strata for m = 2, 3, 4
        (lambda: nn.Conv2d(3, 4, 3, padding=1).to(memory_format=torch.channels_last), (5, 3, 6, 8)),
        (lambda: nn.Conv1d(3, 4, 3, padding=1), (5, 3, 12)),
        (lambda: nn.Conv3d(3, 4, 3, padding=1), (2, 3, 4, 4, 3)),
        (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 6, 8)),  # unbatched
    ],
)
@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_gathering_within_strata_gives_the_same_gradient_bit_for_bit(monkeypatch, make, shape, m):
    # off the CPU the sampled path gathers equal strata from the (N, C, m, L/m) view by the position within each
    # stratum; on the CPU from (N, C, L) by absolute position: forced here both ways, on the CPU
    import per_core.regularizer as reg

    assert not reg._within_strata(torch.device("cpu")) and reg._within_strata(torch.device("cuda", 0))
    grads, asked = [], []
    for within in (False, True):
        monkeypatch.setattr(reg, "_within_strata", lambda device, within=within: asked.append(device) or within)
        torch.manual_seed(0)
        layer = make().double()
        x = torch.randn(shape, generator=gen(1), dtype=F64, requires_grad=True)
        if len(shape) == 4 and layer.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        with PER(layer, 0.7, 16, seed=3, locations=m, locations_seed=4):
            y = layer(x)
            (y * torch.randn(y.shape, generator=gen(2), dtype=F64)).sum().backward()
        grads.append(x.grad)
    assert len(asked) == 2  # the hook asks, once per forward
    assert torch.equal(grads[0], grads[1])


class _RecordingGraph:
    """Stands in for torch.cuda.CUDAGraph: records what is registered with it."""

    def __init__(self):
        self.generators = []

    def register_generator_state(self, generator):
        self.generators.append(generator)


@pytest.mark.parametrize("locations_seed", [None, 5])
def test_register_with_graph_registers_the_generators_the_hooks_draw_from(locations_seed):
    # a CUDA graph advances only registered generators on replay: registering a generator the hooks do not use
    # (a fresh one, or one keyed on another device) would replay the capture's slices and locations every step
    conv = nn.Conv2d(2, 3, 3, padding=1)
    per = PER(conv, 1.0, 8, seed=1, locations=2, locations_seed=locations_seed)
    graph = _RecordingGraph()
    per._register_generators(graph, torch.device("cpu"))  # before any forward: the generators are made here
    assert len(graph.generators) == (1 if locations_seed is None else 2)
    before = [g.get_state() for g in graph.generators]
    conv(torch.randn(4, 2, 5, 5)).sum().backward()
    for b, g in zip(before, graph.generators, strict=True):  # the hooks drew from exactly these generators
        assert not torch.equal(b, g.get_state())


def test_register_with_graph_takes_cuda_devices_and_names_the_current_one(monkeypatch):
    # torch casts a registered generator to a CUDA one unchecked; the hooks key generators on cuda:i, not cuda
    per = PER(nn.Linear(2, 2), 1.0)
    seen = []
    monkeypatch.setattr(PER, "_register_generators", lambda self, graph, device: seen.append(device))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for device in (None, "cuda", torch.device("cuda", 0), "cuda:2"):
        per.register_with_graph(_RecordingGraph(), device)
    assert seen == [torch.device("cuda", 1), torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 2)]
    for device in ("cpu", "mps", "meta"):
        with pytest.raises(ValueError, match=f"CUDA graphs run on CUDA devices, got device '{device}'"):
            per.register_with_graph(_RecordingGraph(), device)


@pytest.mark.parametrize(("where", "locations"), [("slices", None), ("slices", 2), ("locations", 2)])
def test_a_graph_capture_without_registered_generators_says_to_register_them(monkeypatch, where, locations):
    # torch's own words on a CUDA graph (H200, G6): "Attempt to increase offset for a CUDA generator not in capture
    # mode." raised by the first draw; faked here, at each of PER's draws (forward, or the batched backward)
    import per_core.regularizer as reg

    def unregistered(*args, **kwargs):
        raise RuntimeError("Attempt to increase offset for a CUDA generator not in capture mode.")

    if where == "slices":
        monkeypatch.setattr(reg, "sample_slices", unregistered)
    else:
        monkeypatch.setattr(reg.PER, "_pick_locations", unregistered)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    PER(conv, 1.0, 8, locations=locations)
    with pytest.raises(RuntimeError, match=r"register_with_graph\(graph\) before torch.cuda.graph"):
        conv(torch.randn(2, 2, 5, 5)).sum().backward()
    monkeypatch.setattr(reg, "sample_slices", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    monkeypatch.setattr(reg.PER, "_pick_locations", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="^other$"):  # any other error passes unchanged
        conv(torch.randn(2, 2, 5, 5)).sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_step_captured_in_a_cuda_graph_draws_new_slices_and_locations_every_replay():
    dev = torch.device("cuda")
    conv = nn.Conv2d(3, 4, 3, padding=1).to(dev)
    x = torch.randn(8, 3, 6, 6, device=dev)
    per = PER(conv, 1.0, 16, seed=3, locations=2, locations_seed=4)

    def step():
        y = conv(x)
        y.retain_grad()  # retained after the hooks ran: 1 (from the sum) + PER's part at the chosen locations
        y.sum().backward()
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    per.register_with_graph(graph)
    with torch.cuda.graph(graph):
        y = step()
    parts = []
    for _ in range(3):
        graph.replay()
        parts.append(y.grad - 1)
    for part in parts:  # 2 distinct locations per image, every channel: 8 x 4 x 2 entries
        assert int((part != 0).sum()) == 64 and float(part.abs().max()) > 1e-4
    assert not torch.equal(parts[0] != 0, parts[1] != 0) and not torch.equal(parts[1] != 0, parts[2] != 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": -1.0}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": 1.0, "n_slices": 0}, "n_slices"),
        ({"lam": 1.0, "locations": 0}, "locations"),
    ],
)
def test_bad_per_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PER(nn.Linear(2, 2), **kwargs)


def test_bad_inputs_name_what_is_expected():
    with pytest.raises(ValueError, match=r"shape \(N, d\).*as_samples"):
        per_loss(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        per_grad(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one row"):
        per_loss(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"must be finite, got 2 NaN/inf"):
        per_grad(torch.tensor([[0.0, float("nan")], [float("inf"), 1.0]]))
    with pytest.raises(ValueError, match="theta must have shape"):
        per_loss(torch.zeros(2, 3), theta=torch.ones(4, 2))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        PER([nn.Linear(2, 2), "fc"], 1.0)
    with pytest.raises(ValueError, match="layout"):
        as_samples(torch.zeros(2, 3), "nchw")


# --- the fast paths of issue 7 (channels-first kernel, location sampler) --------------------------


@pytest.mark.parametrize("chunk", [1 << 20, 6 * 35, 6 * 7, 6 * 3, 6, 1])
def test_gradient_kernel_with_a_folded_scale_is_chunking_invariant(chunk):
    from per_core.per import grad_and_loss

    rows = torch.randn(35, 3, generator=gen(20), dtype=F64) * 1.7 - 0.2
    theta = sample_slices(6, 3, generator=gen(21), dtype=F64)
    g, loss = grad_and_loss(rows, theta, True, chunk, 0.25)  # one reused block of <= chunk elements
    torch.testing.assert_close(g, 0.25 * per_grad(rows, theta=theta), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss, per_loss(rows, theta=theta), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("n_loc", "m"), [(25, 7), (64, 16), (10, 9)])
def test_location_sampler_draws_m_distinct_positions_each_with_probability_m_over_l(n_loc, m):
    per = PER(nn.Identity(), 1.0, locations=m)
    flat = torch.zeros(4000, 1, n_loc)
    idx = per._pick_locations(flat, gen(22))
    assert idx.shape == (4000, m)
    assert all(len(set(row.tolist())) == m for row in idx[:200])  # distinct within an image
    freq = torch.bincount(idx.flatten(), minlength=n_loc).double() / 4000
    p = m / n_loc
    se = math.sqrt(p * (1 - p) / 4000)
    assert float((freq - p).abs().max()) < 5 * se + 1e-12, freq


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("m", [5, 4])  # 30 locations: equal strata of 6 (gathered within strata), or 7-8 each
def test_sampled_locations_gradient_is_per_grad_of_the_chosen_rows_scattered_back(channels_last, m):
    h0 = torch.randn(3, 4, 5, 6, generator=gen(23), dtype=F64)
    if channels_last:
        h0 = h0.contiguous(memory_format=torch.channels_last)
    lam, s, seed = 0.7, 16, 4
    layer = nn.Identity()
    with PER(layer, lam, s, seed=seed, locations=m):
        h = h0.clone().requires_grad_()
        up = torch.randn(h0.shape, generator=gen(24), dtype=F64)
        layer(h).backward(up)
    g = gen(seed)  # PER's draws, in order: the locations (forward), then the slices (backward)
    idx = PER(nn.Identity(), 1.0, locations=m)._pick_locations(h0.flatten(2), g)  # (N, m)
    theta = sample_slices(s, 4, generator=g, dtype=F64)
    flat = h0.flatten(2)  # (N, C, L)
    rows = flat.gather(2, idx[:, None, :].expand(-1, 4, -1)).transpose(1, 2).reshape(-1, 4)  # (N*m, C)
    expected = torch.zeros_like(flat)
    g_rows = per_grad(rows, theta=theta).view(3, m, 4).transpose(1, 2)
    expected.scatter_add_(2, idx[:, None, :].expand(-1, 4, -1), lam * g_rows)
    torch.testing.assert_close(h.grad, up + expected.view(h0.shape), rtol=1e-12, atol=1e-14)


def _note_pointers(where: list):
    """A forward hook whose tensor hook notes the data pointer of the gradient it sees (and keeps no reference)."""

    def forward_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.register_hook(lambda g: where.append(g.data_ptr()))

    return forward_hook


@pytest.mark.parametrize("locations", [None, 2])
def test_per_adds_into_a_gradient_only_it_holds_and_copies_one_another_tensor_shares(locations):
    lam, s = 0.5, 8
    h0 = torch.randn(3, 4, 5, 5, generator=gen(32), dtype=F64)
    y0 = torch.randn(3, 4, 5, 5, generator=gen(33), dtype=F64)
    for shared in (False, True):
        tap, before, after = nn.Identity(), [], []
        tap.register_forward_hook(_note_pointers(before))
        with PER(tap, lam, s, seed=6, locations=locations):
            tap.register_forward_hook(_note_pointers(after))
            h, y = h0.clone().requires_grad_(), y0.clone().requires_grad_()
            y_in = y * 1.0  # made first, so its backward runs after the tap's (autograd goes newest first)
            out = tap(h * 1.0)
            # shared: the addition hands one gradient tensor to both of its inputs, y_in's still holds it
            ((out + y_in).relu() if shared else out.relu() + y_in.relu()).sum().backward()
        relu_grad = (h0 + y0 > 0 if shared else y0 > 0).to(F64)
        torch.testing.assert_close(y.grad, relu_grad, rtol=0, atol=0)  # PER's share never reaches y
        reference = h0.clone().requires_grad_()  # the same gradient by autograd of the loss, same slices
        with PER(nn.Identity(), lam, s, seed=6, locations=locations) as twin:
            twin.modules["Identity"](reference * 1.0).mul((h0 + y0 > 0) if shared else (h0 > 0)).sum().backward()
        torch.testing.assert_close(h.grad, reference.grad, rtol=1e-12, atol=1e-14)
        # where nothing else holds the gradient PER adds into it in place; a shared one it copies
        assert (before == after) == (not shared), (shared, before, after)


@pytest.mark.parametrize("locations", [None, 2])
def test_a_residual_input_sums_its_two_gradients_in_place_into_what_per_returned(locations):
    # autograd sums the two gradients of a tensor used twice (a residual block's input) in place only
    # into a tensor nothing else holds: PER's hook must leave no reference behind (a view, or a
    # Python storage object attached to the gradient, each cost a new full-size sum per block)
    tap, before, after, at_input = nn.Identity(), [], [], []
    tap.register_forward_hook(_note_pointers(before))  # its tensor hook runs before PER's
    x = torch.randn(4, 3, 5, 5, generator=gen(31), dtype=F64, requires_grad=True)
    conv = nn.Conv2d(3, 3, 3, padding=1).double()
    with PER(tap, 0.5, 8, locations=locations):
        tap.register_forward_hook(_note_pointers(after))  # after PER's
        a = x * 2
        a.register_hook(lambda g: at_input.append(g.data_ptr()))
        tap(conv(a) + a).relu().sum().backward()
    assert before == after  # PER added into the ReLU's gradient, which nothing else held
    assert at_input == after  # and autograd summed the conv's share into that same tensor
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("holder", ["caller", "earlier hook"])
def test_per_never_changes_a_gradient_someone_else_holds(holder):
    tap, kept = nn.Identity(), []
    if holder == "earlier hook":

        def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            out.register_hook(kept.append)  # runs before PER's hook and keeps the tensor it saw

        tap.register_forward_hook(keep)
    h0 = torch.randn(2, 3, 4, 4, generator=gen(34), dtype=F64)
    up = torch.randn(2, 3, 4, 4, generator=gen(35), dtype=F64)
    up0 = up.clone()
    with PER(tap, 1.0, 8, locations=2):
        h = h0.clone().requires_grad_()
        out = tap(h * 1.0)
        if holder == "caller":
            out.backward(up)  # the caller's own tensor is the gradient PER receives
        else:
            (out * up).sum().backward()  # a fresh gradient, but the earlier hook keeps it
    torch.testing.assert_close(up, up0, rtol=0, atol=0)
    if kept:
        torch.testing.assert_close(kept[0], up0, rtol=0, atol=0)
    assert float((h.grad - up0).abs().max()) > 1e-3  # PER did add its part, into a copy


@pytest.mark.parametrize("context", ["tracer", "checkpoint", "torch.func"])
def test_the_sole_owner_counts_do_not_depend_on_what_the_first_forward_runs_under(context):
    # the counts are found once per process, at the first PER forward on a device type; a tracer
    # reading frame locals there would inflate them (a gradient a user keeps would then pass as
    # PER's own), a checkpointed region would see the probes' extra tensors, torch.func its wrappers
    from torch.utils.checkpoint import checkpoint

    import per_core.inplace as inplace

    inplace.sole_owner_counts.cache_clear()
    clean = inplace.sole_owner_counts("cpu")
    assert clean is not None  # this torch build supports the in-place path
    inplace.sole_owner_counts.cache_clear()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.Conv2d(4, 2, 3, padding=1)).double()
    x = torch.randn(2, 3, 6, 6, generator=gen(36), dtype=F64, requires_grad=True)
    with PER(net[0], 0.5, 8, seed=1):
        if context == "tracer":
            sys.setprofile(lambda frame, event, arg: frame.f_locals)
            try:
                out = net(x)
            finally:
                sys.setprofile(None)
            out.pow(2).sum().backward()
        elif context == "checkpoint":
            checkpoint(net, x, use_reentrant=False).pow(2).sum().backward()
        else:
            params = dict(net.named_parameters())
            torch.func.grad(lambda p: torch.func.functional_call(net, p, (x,)).pow(2).sum())(params)
    assert inplace.sole_owner_counts("cpu") == clean


def test_the_probes_run_on_the_device_named_in_full(monkeypatch):
    # a new thread's current CUDA device is 0: probes on "cuda" would open a context on GPU 0 from
    # every data-parallel rank, so they must use the indexed device they are given
    import per_core.inplace as inplace

    seen, ones = [], torch.ones

    def spy(*size, device=None, **kw):
        seen.append(device)
        return ones(*size, device=device, **kw)

    monkeypatch.setattr(torch, "ones", spy)
    inplace.sole_owner_counts.cache_clear()
    try:
        assert inplace.sole_owner_counts("cpu:0") == inplace.sole_owner_counts("cpu") is not None
    finally:
        inplace.sole_owner_counts.cache_clear()
    assert seen.count("cpu:0") == 4 and set(seen) == {"cpu:0", "cpu"}


@pytest.mark.parametrize("locations", [None, 2])
def test_torch_func_grad_through_per_equals_backward(locations):
    # torch.func's gradients are wrappers without a storage to count: PER adds into a copy; its
    # rows are wrappers too, which a batched matmul cannot write into (the sampled path's out=)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.Conv2d(4, 2, 3, padding=1)).double()
    x = torch.randn(2, 3, 6, 6, generator=gen(37), dtype=F64)
    with PER(net[0], 0.5, 8, seed=1, locations=locations):
        got = torch.func.grad(lambda p: torch.func.functional_call(net, p, (x,)).pow(2).sum())(
            dict(net.named_parameters())
        )
    with PER(net[0], 0.5, 8, seed=1, locations=locations):
        net(x).pow(2).sum().backward()
    for name, param in net.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-12, atol=1e-14)


def test_all_locations_on_a_channels_last_conv_equal_autograd_of_per_loss():
    conv = nn.Conv2d(3, 5, 3, padding=1).double().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6, generator=gen(25), dtype=F64).contiguous(memory_format=torch.channels_last)
    with PER(conv, 0.3, 8, seed=1):
        conv(x).sum().backward()
    got = conv.weight.grad.clone()
    conv.weight.grad = None
    theta = sample_slices(8, 5, generator=gen(1), dtype=F64)
    out = conv(x)
    (out.sum() + 0.3 * per_loss(as_samples(out), theta=theta)).backward()
    torch.testing.assert_close(got, conv.weight.grad, rtol=1e-10, atol=1e-12)


def test_sampled_locations_track_the_penalty_of_the_chosen_rows():
    layer = nn.Identity()
    h0 = torch.randn(2, 3, 4, 4, generator=gen(26), dtype=F64)
    with PER(layer, 0.0, 8, seed=2, locations=3, track_penalty=True) as per:
        h = h0.clone().requires_grad_()
        layer(h).sum().backward()
        got = per.penalty()
    g = gen(2)
    idx = per._pick_locations(h0.flatten(2), g)
    theta = sample_slices(8, 3, generator=g, dtype=F64)
    rows = h0.flatten(2).gather(2, idx[:, None, :].expand(-1, 3, -1)).transpose(1, 2).reshape(-1, 3)
    assert got == pytest.approx(float(per_loss(rows, theta=theta)), rel=1e-12)
    assert torch.equal(h.grad, torch.ones_like(h0))  # lam = 0: the gradient is untouched


@pytest.mark.parametrize("chunk", [1 << 20, 2 * 6 * 8, 6 * 8, 7])  # layers per batched block: all, 2, 1, 1 (row chunks)
def test_sampled_layers_of_equal_shape_are_batched_and_each_gets_its_own_slices(chunk):
    # three layers, two of equal shape (batched together) and one other; forward order a, b, c
    shapes = {"a": (2, 3, 4, 4), "b": (2, 5, 4, 4), "c": (2, 3, 4, 4)}
    h0 = {k: torch.randn(v, generator=gen(30 + i), dtype=F64) for i, (k, v) in enumerate(shapes.items())}
    layers = {k: nn.Identity() for k in shapes}
    lam, s, m = 0.5, 8, 3
    with PER(layers, lam, s, seed=5, locations=m, chunk_elements=chunk) as per:
        hs = {k: h0[k].clone().requires_grad_() for k in shapes}
        sum(layers[k](hs[k]).sum() for k in shapes).backward()
        assert not per._pending  # everything consumed
    g = gen(5)
    idx = {k: per._pick_locations(h0[k].flatten(2), g) for k in shapes}  # forward: the locations, in order
    theta = {}
    for group in (("a", "c"), ("b",)):  # backward: s slices per layer, per group of equal rows shape
        d = shapes[group[0]][1]
        for k, t in zip(group, sample_slices(len(group) * s, d, generator=g, dtype=F64).view(-1, s, d), strict=True):
            theta[k] = t
    for k, shape in shapes.items():
        flat, c = h0[k].flatten(2), shape[1]
        ix = idx[k][:, None, :].expand(-1, c, -1)
        rows = flat.gather(2, ix).transpose(1, 2).reshape(-1, c)
        expected = torch.zeros_like(flat).scatter_add_(
            2, ix, lam * per_grad(rows, theta=theta[k]).view(2, m, c).transpose(1, 2)
        )
        torch.testing.assert_close(hs[k].grad, 1 + expected.view(shape), rtol=1e-12, atol=1e-14)


def test_sampled_forwards_without_backward_are_not_kept_and_a_retained_graph_backpropagates_twice():
    layer = nn.Identity()
    h0 = torch.randn(2, 3, 4, 4, generator=gen(40), dtype=F64)
    with PER(layer, 1.0, 8, locations=2) as per:
        for _ in range(50):  # forwards whose graphs are dropped
            layer(h0.clone().requires_grad_()).sum()
        h = h0.clone().requires_grad_()
        out = layer(h).sum()
        assert sum(ref() is not None for ref in per._pending) == 1
        out.backward(retain_graph=True)
        first = h.grad.clone()
        out.backward()
        torch.testing.assert_close(h.grad, 2 * first)  # the same slices and locations both times


# --- argument and edge-case validation (reliability issue) ------------------------------------------


@pytest.mark.parametrize(
    ("theta", "exc", "match"),
    [
        (torch.ones(4, 3), ValueError, r"theta must have rows of unit norm .* \[1\.73205, 1\.73205\]"),
        (torch.full((4, 3), float("nan")), ValueError, "theta must be finite"),
        (torch.zeros(0, 3), ValueError, r"theta must have shape \(n_slices, 3\) with n_slices >= 1"),
        (np.eye(3), TypeError, r"theta must be a torch\.Tensor .* torch\.from_numpy"),
        (torch.eye(3, dtype=torch.long), TypeError, "theta must be a floating-point"),
    ],
)
def test_bad_theta_is_rejected_naming_theta(theta, exc, match):
    h = torch.randn(5, 3, generator=gen(50))
    for fn in (per_loss, per_grad):
        with pytest.raises(exc, match=match):
            fn(h, theta=theta)


def test_theta_rounded_to_half_precision_is_still_unit():
    h = torch.randn(5, 3, generator=gen(51))
    theta = sample_slices(8, 3, generator=gen(52))
    for dt in (torch.float16, torch.bfloat16):
        torch.testing.assert_close(per_loss(h, theta=theta.to(dt)), per_loss(h, theta=theta), rtol=2e-2, atol=0)


def test_bad_generator_chunk_and_seed_are_rejected_naming_the_argument():
    h = torch.randn(5, 3, generator=gen(53))
    for fn in (per_loss, per_grad):
        with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None, got int"):
            fn(h, 4, 5)
        for chunk in (0, -1, 2.5):
            with pytest.raises(ValueError, match="chunk_elements must be a positive integer"):
                fn(h, 4, chunk_elements=chunk)
    with pytest.raises(TypeError, match="generator"):
        sample_slices(4, 3, generator=np.random.default_rng(0))
    for seed in ("x", -1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            PER(nn.Linear(2, 2), 1.0, seed=seed)
    with pytest.raises(ValueError, match="chunk_elements"):
        PER(nn.Linear(2, 2), 1.0, chunk_elements=0)
    assert PER(nn.Linear(2, 2), 1.0, seed=np.int64(3)).seed == 3


def test_float32_overflow_of_the_loss_is_an_error_not_an_inf():
    h = torch.full((64, 2), 3e37)  # each term fits in float32, their sum over 64 x 16 does not
    with pytest.raises(ValueError, match=r"per_loss overflowed in torch\.float32 .* use float64"):
        per_loss(h, 16, gen(54))
    assert math.isfinite(float(per_loss(h.double(), 16, gen(54))))
    assert torch.isfinite(per_grad(h, 16, gen(54))).all()  # the gradient is bounded by 1/N: never overflows


@pytest.mark.parametrize(
    ("layer", "shape", "locations"),
    [
        (nn.Linear(3, 4), (0, 3), None),
        (nn.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5), None),
        (nn.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5), 2),
        (nn.LSTM(3, 4), (5, 0, 3), None),
    ],
)
def test_an_empty_batch_is_skipped_by_the_hooks(layer, shape, locations):
    with PER(layer, 1.0, 8, locations=locations, track_penalty=True) as per:
        x = torch.zeros(shape, requires_grad=True)
        out = layer(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        assert x.grad.shape == shape and not per._penalties  # nothing to regularize, nothing tracked
        # and the next non-empty batch is regularized as usual
        x = torch.randn((2, *shape[1:]) if not isinstance(layer, nn.LSTM) else (5, 2, 3), requires_grad=True)
        out = layer(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        assert per.penalty() > 0.79


def test_other_public_functions_name_their_argument():
    with pytest.raises(TypeError, match="a must be a floating-point torch.Tensor, got float"):
        folded_normal_mean(0.5)
    with pytest.raises(ValueError, match="rows must be a torch.Tensor of shape"):
        from_samples(torch.zeros(6), (2, 3))
    with pytest.raises(ValueError, match=r"cannot fill shape \(2, 4\)"):
        from_samples(torch.zeros(2, 3), (2, 4))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        sample_slices(4, 0)


@given(
    n=st.integers(1, 20),
    d=st.integers(1, 6),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, F64]),
    bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_non_finite_inputs_are_rejected_at_any_shape_and_dtype(n, d, dtype, bad, data):
    h = torch.randn(n, d, generator=gen(n * d)).to(dtype)
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))
    h[i, j] = bad
    for fn in (per_loss, per_grad):
        with pytest.raises(ValueError, match=r"h must be finite, got 1 NaN/inf"):
            fn(h, 4, gen(0))
    theta = sample_slices(4, d, generator=gen(1))
    theta[0, j] = bad
    with pytest.raises(ValueError, match="theta must be finite"):
        per_loss(h.nan_to_num(0.0, 0.0, 0.0), theta=theta)


@given(
    values=st.lists(
        st.sampled_from([0.0, 1.0, -2.5, 6e4, -6e4, 3e38, -3e38, 1.7e308, float("nan"), float("inf"), -float("inf")]),
        min_size=1,
        max_size=12,
    ),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, F64]),
)
@settings(max_examples=80, deadline=None)
def test_the_fast_finiteness_check_agrees_with_isfinite(values, dtype):
    # the check sums first: finite values whose sum overflows (3e38 + 3e38 in float32, 6e4 + 6e4 in
    # float16) must still pass, inf - inf (a NaN sum) and a lone NaN must not
    from per_core.per import _all_finite

    t = torch.tensor(values, dtype=F64).to(dtype)  # out-of-range values round to +-inf, as a cast does
    assert _all_finite(t.view(1, -1)) == bool(torch.isfinite(t).all())


def test_finite_rows_whose_sum_overflows_are_accepted():
    h = torch.tensor([[3e38, 3e38], [3e38, -1.0]])  # finite float32, but the sum is inf
    theta = sample_slices(4, 2, generator=gen(2))
    torch.testing.assert_close(per_grad(h, theta=theta), per_grad(h.double(), theta=theta.double()).float())


@pytest.mark.parametrize(
    ("make", "shape", "locations"),
    [
        (lambda: nn.Conv2d(3, 5, 3), (3, 10, 10), None),
        (lambda: nn.Conv2d(3, 5, 3), (3, 10, 10), 2),
        (lambda: nn.Conv1d(3, 4, 3), (3, 9), None),
        (lambda: nn.Linear(4, 6), (4,), None),
    ],
)
def test_an_unbatched_input_is_one_sample_of_the_channels(make, shape, locations):
    # Conv2d takes (C, H, W) as well as (N, C, H, W): without a batch axis, H must not pass for the channels
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(*shape, generator=gen(60), dtype=F64)
    grads, penalties = [], []
    for inp in (x, x.unsqueeze(0)):
        layer.zero_grad()
        with PER(layer, 0.7, 8, seed=4, locations=locations, track_penalty=True) as per:
            layer(inp).pow(2).sum().backward()
            penalties.append(per.penalty())
        grads.append(layer.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    assert penalties[0] == pytest.approx(penalties[1], rel=1e-12)


def test_numpy_scalars_are_accepted_where_numbers_are():
    # a notebook sweeping np.array grids passes numpy scalars
    conv = nn.Conv2d(2, 3, 3)
    per = PER(conv, lam=np.float32(0.5), n_slices=np.int64(16), locations=np.int64(2), chunk_elements=np.int64(4096))
    assert (type(per.lam), type(per.n_slices), type(per.locations), type(per.chunk_elements)) == (float, int, int, int)
    conv(torch.randn(2, 2, 6, 6)).sum().backward()
    h = torch.randn(5, 3, dtype=torch.float64)
    theta = sample_slices(np.int64(8), np.int64(3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert theta.shape == (8, 3)
    assert per_loss(h, np.int64(8), torch.Generator().manual_seed(0)) == per_loss(h, theta=theta)


def test_a_locations_seed_gives_a_rank_its_own_locations_and_resumes_them():
    # data parallel: every rank uses the same slices (same seed) but must draw its own locations; before,
    # the shared generator gave image i of every rank the same positions
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(4, 2, 6, 6, generator=gen(41), dtype=F64)

    def run(rank, state=None):
        per = PER(conv, 0.5, 8, seed=3, locations=2, locations_seed=100 + rank)
        if state is not None:
            per.load_state_dict(state)
        picked = per._pick_locations(x.flatten(2), per._generator(x.device, locations=True))
        return per, picked, per._generator(x.device).get_state()

    per0, loc0, slices0 = run(0)
    _, loc1, slices1 = run(1)
    assert not torch.equal(loc0, loc1) and torch.equal(slices0, slices1)  # own locations, shared slices
    state = per0.state_dict()
    assert state["location_generators"] and state["generators"]
    _, again, _ = run(0, state)
    assert not torch.equal(again, loc0)  # resumed: the stream goes on from where it was saved
    _, fresh, _ = run(0)
    assert torch.equal(fresh, loc0)
    # no locations_seed: the locations come from the slice generator (unchanged)
    plain = PER(conv, 0.5, 8, seed=3, locations=2)
    assert plain._generator(x.device, locations=True) is plain._generator(x.device)
    with pytest.raises(ValueError, match="seed"):
        PER(conv, 0.5, locations_seed=-1)


def test_penalty_under_reentrant_checkpointing_keeps_every_layer():
    # a reentrant checkpoint runs its recomputation and backward as a nested autograd task: keyed on the
    # task, the record was restarted inside the pass and kept only the last layers' penalties
    from torch.utils.checkpoint import checkpoint

    a, b, c = (nn.Linear(3, 3).double() for _ in range(3))
    x = torch.randn(8, 3, generator=gen(50), dtype=F64, requires_grad=True)
    with PER({"a": a, "b": b, "c": c}, 0.5, 8, seed=1, track_penalty=True) as per:
        c(checkpoint(b, a(x), use_reentrant=True)).sum().backward()
        got = per.penalty(per_layer=True)
        c(b(a(x))).sum().backward()
        plain = per.penalty(per_layer=True)
    assert sorted(got) == sorted(plain) == ["a", "b", "c"]


def test_the_names_that_lived_in_per_core_per_still_import_from_there():
    from per_core import per as per_module

    assert per_module.PER is PER and per_module.as_samples is as_samples and per_module.from_samples is from_samples
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        per_module.nope  # noqa: B018


def _gradient_at_output(module: nn.Module, x: torch.Tensor, **per_kwargs) -> torch.Tensor:
    """The gradient PER adds at ``module``'s output (a task loss of 0 * output: PER's term alone)."""
    with PER(module, 1.0, 16, seed=0, **per_kwargs):
        out = module(x.detach().requires_grad_())
        out.retain_grad()
        (out * 0).sum().backward()
    return out.grad


def _reference(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Autograd of per_loss over ``rows`` (a function of ``out``) with PER's first 16 slices of seed 0."""
    theta = sample_slices(16, rows.shape[1], generator=gen(0), dtype=F64)
    return torch.autograd.grad(per_loss(rows, theta=theta), out)[0]


@pytest.mark.parametrize(
    ("module", "shape", "rows_of"),
    [
        (nn.Linear(3, 7), (2, 3, 4, 3), lambda o: o.reshape(-1, 7)),  # channels-last features: rows of 7
        (nn.Linear(3, 7), (2, 5, 3), lambda o: o.reshape(-1, 7)),
        (nn.BatchNorm1d(4), (6, 4, 9), lambda o: o.transpose(1, 2).reshape(-1, 4)),  # after a Conv1d: channels
        (nn.BatchNorm1d(4), (6, 4), lambda o: o),
        (nn.GroupNorm(2, 4), (3, 4, 5, 5), lambda o: o.movedim(1, -1).reshape(-1, 4)),
        (nn.LayerNorm(6), (2, 3, 4, 6), lambda o: o.reshape(-1, 6)),
        (nn.RMSNorm(6), (2, 3, 4, 6), lambda o: o.reshape(-1, 6)),
        (nn.InstanceNorm1d(3), (3, 7), lambda o: o.T),  # unbatched (C, L): one sample of 3 channels per position
    ],
)
def test_each_module_type_gives_the_rows_of_its_own_features(module, shape, rows_of):
    # before: any 4-D output other than a conv's was read as channels first (a Linear on (N, H, W, C) as rows
    # over H, relative error 0.73) and any 3-D one as features last (a BatchNorm1d after a Conv1d as rows over L)
    module = module.double().train()
    x = torch.randn(*shape, generator=gen(40), dtype=F64)
    got = _gradient_at_output(module, x)
    out = module(x.requires_grad_())
    torch.testing.assert_close(got, _reference(out, rows_of(out)), rtol=1e-9, atol=1e-12)


def test_the_layout_argument_decides_for_modules_whose_type_says_nothing():
    x = torch.randn(4, 5, 8, generator=gen(41), dtype=F64)  # a Conv1d's output: 5 channels, 8 positions
    got = _gradient_at_output(nn.ELU(), x, layout="channels_first")
    out = nn.ELU()(x.requires_grad_())
    torch.testing.assert_close(got, _reference(out, out.transpose(1, 2).reshape(-1, 5)), rtol=1e-9, atol=1e-12)
    auto = _gradient_at_output(nn.ELU(), x.detach())  # 'auto' reads 3-D as features last: rows of 8
    torch.testing.assert_close(auto, _reference(out, out.reshape(-1, 8)), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="layout must be None, .* got 'nchw'"):
        PER(nn.ELU(), 1.0, layout="nchw")
    with pytest.raises(ValueError, match=r"layout names unknown layers \['fc'\]; the layers are act"):
        PER({"act": nn.ELU()}, 1.0, layout={"fc": "channels_first"})
    with pytest.raises(ValueError, match=r"layout names unknown layers \[1, 'x'\]"):  # keys of mixed types: sorted
        PER({"act": nn.ELU()}, 1.0, layout={1: "auto", "x": "auto"})
    lin = nn.Linear(3, 7).double()  # a module whose type decides is not overridden (before: rows over time steps)
    y = torch.randn(4, 10, 3, generator=gen(45), dtype=F64)
    got = _gradient_at_output(lin, y, layout="channels_first")
    out = lin(y.requires_grad_())
    torch.testing.assert_close(got, _reference(out, out.reshape(-1, 7)), rtol=1e-9, atol=1e-12)


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: normalizes C of an (N, C, H, W) map by permuting around nn.LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["channels_first", {"LayerNorm2d": "channels_first"}])
def test_a_layernorm_subclass_says_nothing_and_a_mapping_decides_for_any_layer(layout):
    # a first version read every LayerNorm, subclasses too, as features last and ignored layout= for it: ConvNeXt's
    # LayerNorm2d and LayerNorm([C, H, W]) got rows over W (relative error 0.33-0.36)
    ln = LayerNorm2d(4).double()
    x = torch.randn(2, 4, 3, 5, generator=gen(46), dtype=F64)
    got = _gradient_at_output(ln, x, layout=layout)
    out = ln(x.requires_grad_())
    torch.testing.assert_close(got, _reference(out, as_samples(out)), rtol=1e-9, atol=1e-12)
    whole = nn.LayerNorm([4, 3, 5]).double()  # normalizes three axes: its type says nothing
    got = _gradient_at_output(whole, x.detach(), layout="channels_first")
    out = whole(x.detach().requires_grad_())
    torch.testing.assert_close(got, _reference(out, as_samples(out)), rtol=1e-9, atol=1e-12)
    lin = nn.Linear(5, 6).double()  # a mapping overrides even a type that decides
    got = _gradient_at_output(lin, x.detach(), layout={"Linear": "channels_first"})
    out = lin(x.detach().requires_grad_())
    torch.testing.assert_close(got, _reference(out, as_samples(out, "channels_first")), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("cls", "dtype", "warns"), [(nn.LSTM, torch.float32, True), (nn.GRU, F64, False), (nn.LSTM, F64, False)]
)
def test_an_rnn_whose_sequence_output_the_loss_does_not_use_and_the_way_out(cls, dtype, warns):
    # before: a float32 LSTM crashed (AttributeError on a None gradient: its fused kernel gives the sequence and h_n
    # one node); now it warns there. A GRU or float64 LSTM (separate nodes) shows autograd nothing: no warning, as
    # documented. Either way PER adds nothing, and 0 * output.sum() in the loss brings its term in
    rnn = cls(4, 6).to(dtype)
    x = torch.randn(5, 3, 4, generator=gen(42), dtype=dtype)

    def last_hidden(out_and_state):
        state = out_and_state[1]
        return (state[0] if isinstance(state, tuple) else state)[-1]

    vanilla = torch.autograd.grad(last_hidden(rnn(x)).pow(2).sum(), list(rnn.parameters()))
    with PER(rnn, 0.5, 16, seed=0), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        last_hidden(rnn(x)).pow(2).sum().backward()
        assert all(torch.equal(p.grad, v) for p, v in zip(rnn.parameters(), vanilla, strict=True))  # nothing added
        said = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
        assert len(said) == warns and all("does not use the output of layer" in m and "0 * output" in m for m in said)
        rnn.zero_grad()
        out_and_state = rnn(x)
        (last_hidden(out_and_state).pow(2).sum() + 0 * out_and_state[0].sum()).backward()
        assert len([w for w in seen if issubclass(w.category, RuntimeWarning)]) == warns  # the way out: no warning
    got = [p.grad.clone() for p in rnn.parameters()]
    rnn.zero_grad()
    out, state = rnn(x)
    slices = gen(0)
    sample_slices(16, 6, generator=slices, dtype=dtype)  # the first forward's, unused
    theta = sample_slices(16, 6, generator=slices, dtype=dtype)
    (last_hidden((out, state)).pow(2).sum() + 0.5 * per_loss(out.reshape(-1, 6), theta=theta)).backward()
    for a, p in zip(got, rnn.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


def test_no_unused_output_warning_where_the_output_gets_its_gradient_in_another_backward():
    # earlier versions of the warning inferred an unused output from the parameters' gradient, and fired falsely when
    # that came first: a weight penalty backpropagated on its own, or tied weights under reentrant checkpointing
    lin, head = nn.Linear(4, 4), nn.Linear(4, 2)
    x = torch.randn(8, 4, generator=gen(44))
    emb = nn.Linear(4, 4, bias=False)
    dec = nn.Linear(4, 4, bias=False)
    dec.weight = emb.weight  # tied
    with PER([lin, emb], 0.1, 8), warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            out = head(lin(x))
            (1e-4 * lin.weight.pow(2).sum()).backward()  # the parameters' gradient first
            out.pow(2).mean().backward()
            y = torch.utils.checkpoint.checkpoint(dec, torch.tanh(emb(x)), use_reentrant=True)
            y.pow(2).mean().backward()


def test_a_module_container_attaches_its_modules_and_penalty_says_why_nothing_was_tracked():
    # before: PER(ModuleList) hooked the list itself, which is never called: nothing was regularized, and penalty()
    # asked to "set track_penalty=True" although it was
    blocks = nn.ModuleList([nn.Linear(5, 5), nn.Linear(5, 5)]).double()
    x = torch.randn(8, 5, generator=gen(43), dtype=F64)
    per = PER(blocks, 0.3, 16, track_penalty=True)
    with pytest.raises(RuntimeError, match="no regularized layer ran forward and backward since track_penalty"):
        per.penalty()
    blocks[1](blocks[0](x)).sum().backward()
    assert sorted(per.penalty(per_layer=True)) == ["0:Linear", "1:Linear"]  # in backward order
    per.remove()
    named = PER(nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.ELU()}), 0.1)
    assert list(named.modules) == ["a", "b"]
    named.remove()
    with pytest.raises(TypeError, match=r"'inner' is a ModuleList, which has no forward of its own"):
        PER({"inner": blocks}, 0.1)
    with pytest.raises(RuntimeError, match="set track_penalty=True before a backward pass"):
        PER(blocks, 0.1).penalty()


class Halves(nn.Module):
    """Two channel halves of a map: a node with two outputs, like a fused RNN kernel's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.chunk(2, dim=1)


@pytest.mark.parametrize("locations", [None, 2])
def test_the_sampled_hook_handles_a_none_gradient_like_the_full_one(locations):
    # the final review: with locations=m the sampled hook called owns(None) and crashed (AttributeError); now both
    # hooks warn, naming the backward() line, and add nothing
    split = Halves()
    x = torch.randn(3, 4, 4, 4, generator=gen(48), requires_grad=True)
    with PER({"split": split}, 0.1, 8, locations=locations, layout="channels_first"):
        _unused, second = split(x)  # PER regularizes the first output, which the loss leaves out
        with pytest.warns(RuntimeWarning, match="does not use the output of layer 'split'") as seen:
            second.sum().backward()
    assert seen[0].filename == __file__  # the line of the backward() call
    assert torch.equal(x.grad[:, 2:], torch.ones(3, 2, 4, 4)) and not x.grad[:, :2].any()  # PER added nothing


@pytest.mark.parametrize("locations", [None, 2])
def test_per_under_loss_scaling_adds_what_it_adds_without(locations):
    # a review: GradScaler multiplies every incoming gradient by its scale S and unscale_ divides by S; PER added
    # lam * grad unscaled, so its term reached the optimizer divided by S (65536 by default): PER was off
    def grads(scaler):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 1)).double()
        x = torch.randn(5, 2, 6, 6, generator=gen(40), dtype=F64)
        with PER(net[0], 0.5, 16, seed=2, locations=locations, grad_scaler=scaler):
            loss = net(x).pow(2).mean()
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            opt = torch.optim.SGD(net.parameters(), lr=0.0)
            scaler.unscale_(opt)
        return [p.grad.clone() for p in net.parameters()]

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for got, want in zip(grads(scaler), grads(None), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(TypeError, match="grad_scaler must be a torch.amp.GradScaler"):
        PER(nn.Linear(2, 2), 1.0, grad_scaler=2.0**16)
    with pytest.warns(RuntimeWarning, match="float16 output and no grad_scaler"):
        with PER(nn.Linear(2, 2).half(), 1.0) as per:
            per.modules["Linear"](torch.randn(3, 2, dtype=torch.float16))


def test_sampled_backward_hooks_in_two_threads_at_once():
    # a review: nn.DataParallel runs each replica's backward in its own thread; two hooks of one PER with locations
    # raced in the batched computation (one emptied the queue the other was computing from: AssertionError)
    import threading

    for trial in range(10):
        with PER(nn.Identity(), 1.0, 8, seed=trial, locations=2) as per:
            tap = per.modules["Identity"]
            xs = [torch.randn(4, 3, 6, 6, dtype=F64, requires_grad=True) for _ in range(2)]
            outs = [tap(x * 1.0).pow(2).sum() for x in xs]
            errors, barrier = [], threading.Barrier(2)

            def run(out, errors=errors, barrier=barrier):
                barrier.wait()
                try:
                    out.backward()
                except Exception as err:  # any failure is the finding
                    errors.append(err)

            threads = [threading.Thread(target=run, args=(o,)) for o in outs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            assert all(torch.isfinite(x.grad).all() for x in xs)


def test_forwards_without_backward_do_not_pile_up_with_locations():
    # a review: every forward with grad queued a reference for the next backward, never pruned when none came
    with PER(nn.Identity(), 1.0, 8, locations=2) as per:
        for _ in range(2000):
            per.modules["Identity"](torch.randn(2, 3, 4, 4, requires_grad=True) * 1.0)
        assert len(per._pending) < 200


@pytest.mark.parametrize("locations", [None, 2])
def test_the_tracked_penalty_is_the_same_on_both_paths_whatever_the_order(locations):
    # a review: the sampled path tracked every pending layer at the first backward, so two forwards A, B and then
    # backward A gave A + B there, A on the all-locations path
    tap = nn.Identity()
    xa, xb = (torch.randn(6, 3, 5, 5, generator=gen(k), dtype=F64) for k in (50, 51))
    with PER(tap, 1.0, 16, seed=4, locations=locations, track_penalty=True) as per:
        outs = [tap(x.clone().requires_grad_() * 1.0).sum() for x in (xa, xb)]
        outs[0].backward()
        after_a = per.penalty()
        outs[1].backward()
        after_b = per.penalty()
    with PER(nn.Identity(), 1.0, 16, seed=4, locations=locations, track_penalty=True) as alone:
        alone.modules["Identity"](xa.clone().requires_grad_() * 1.0).sum().backward()
        a_alone = alone.penalty()
    assert after_a == pytest.approx(a_alone, rel=0.3)  # A's rows (other slices, other locations: near)
    assert after_b > 1.5 * after_a  # both forwards' layers, as the docstring says


def test_a_channels_last_gradient_is_added_into_in_place():
    # a review: a channels-last conv output's gradient never took the in-place path (is_contiguous() is False)
    for locations in (None, 2):
        tap, before, after = nn.Identity(), [], []
        tap.register_forward_hook(_note_pointers(before))
        with PER(tap, 0.5, 8, locations=locations):
            tap.register_forward_hook(_note_pointers(after))
            h = torch.randn(3, 4, 5, 5, dtype=F64).to(memory_format=torch.channels_last).requires_grad_()
            out = tap(h * 1.0)
            assert out.is_contiguous(memory_format=torch.channels_last)
            out.relu().sum().backward()
        assert before == after, locations


def test_the_loss_scale_goes_to_each_layers_device_and_per_copies():
    # a review: the scale tensor lives where the scaled loss was (nn.DataParallel: the first GPU); a layer on another
    # device then failed in backward ("Expected all tensors to be on the same device")
    import copy

    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(torch.ones(()))  # the scale is made at the first scale() call
    per = PER(nn.Linear(2, 2), 0.5, grad_scaler=scaler)
    on_meta = per._scale(torch.device("meta"))
    assert isinstance(on_meta, torch.Tensor) and on_meta.device.type == "meta" and on_meta.dtype == F64
    assert float(per._scale(torch.device("cpu"))) == 4.0

    # a deep copy of PER was inert (its copied modules' hooks called the original), a deep-copied model (an EMA)
    # was regularized by the original PER: a model holding its PER gets a PER of its own, another model's copy is
    # left alone with a warning
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 3)
            self.per = PER(self.lin, 0.5, seed=7, track_penalty=True)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    held = Holder()
    twin = copy.deepcopy(held)
    assert twin.per is not held.per and twin.per.modules["Linear"] is twin.lin and len(twin.lin._forward_hooks) == 1
    x = torch.randn(4, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        held(x).sum().backward()
        twin(x).sum().backward()
    assert twin.per.penalty() == held.per.penalty()  # the same settings and slice stream, on equal weights
    torch.testing.assert_close(twin.lin.weight.grad, held.lin.weight.grad)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    held.per.grad_scaler = scaler
    state = copy.deepcopy({"scaler": scaler, "model": held})  # a forked run: the copy scales with its own scaler
    assert state["model"].per.grad_scaler is state["scaler"] and copy.deepcopy(held).per.grad_scaler is scaler
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    per = PER(net[0], 0.5, track_penalty=True)
    ema = copy.deepcopy(net)
    with pytest.warns(RuntimeWarning, match="a copy of layer 'Linear' ran forward"):
        ema(torch.randn(4, 2)).sum().backward()
    with pytest.raises(RuntimeError, match="no penalty was tracked yet"):
        per.penalty()  # the copy added nothing to the original's record
    net(torch.randn(4, 2)).sum().backward()
    assert per.penalty() > 0.79
    # nn.DataParallel's replicas are the same layer on other devices: regularized (replicate() makes them so)
    replica = net[0]._replicate_for_data_parallel()
    replica.weight, replica.bias = net[0].weight, net[0].bias
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replica(torch.randn(4, 2)).sum().backward()
    assert per.penalty(per_layer=True)["Linear"] > 0.79
