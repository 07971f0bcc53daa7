"""Baselines against hand computations and independent references (numpy, scipy, finite differences)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import per_core.baselines as baselines
from per_core.baselines import (
    VCL,
    DecorrelatedBatchNorm2d,
    L1Penalty,
    L2Penalty,
    RecurrentBatchNormLSTM,
    StepwiseBatchNorm1d,
    inverse_sqrt_spd,
    make_norm,
)
from per_core.models import build_model

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_public_names_exist():
    assert all(hasattr(baselines, name) for name in baselines.__all__)


# --- activation penalties and VCL ------------------------------------------------------------


class TwoLayers(nn.Module):
    """conv -> ELU -> linear; the conv output and the linear output are the penalized layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.elu(self.conv(x)).flatten(1))


def captured_outputs(model: TwoLayers, x: torch.Tensor) -> list[np.ndarray]:
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach().numpy())) for m in (model.conv, model.fc)]
    model(x)
    for h in hooks:
        h.remove()
    return outs


def vcl_numpy(h: np.ndarray, n: int, beta: float) -> float:
    rows = h.reshape(h.shape[0], -1)  # every activation is a unit, every sample a row
    var_a, var_b = rows[:n].var(axis=0, ddof=1), rows[n : 2 * n].var(axis=0, ddof=1)
    return float(np.mean((1 - var_a / (var_b + beta)) ** 2))


@pytest.mark.parametrize(
    ("make", "reference"),
    [
        (lambda mods: L1Penalty(mods, lam=0.3), lambda h: 0.3 * np.abs(h).mean()),
        (lambda mods: L2Penalty(mods, lam=0.3), lambda h: 0.3 * (h**2).mean()),
        (lambda mods: VCL(mods, lam=0.3), lambda h: 0.3 * vcl_numpy(h, 5, 1.0)),
        (lambda mods: VCL(mods, lam=0.3, sample_size=None, beta=0.5), lambda h: 0.3 * vcl_numpy(h, 6, 0.5)),
    ],
    ids=["l1", "l2", "vcl", "vcl_halves"],
)
def test_penalty_values_match_numpy_on_the_same_rows(make, reference):
    torch.manual_seed(0)
    model = TwoLayers().double()
    x = torch.randn(13, 2, 4, 4, generator=gen(1), dtype=F64)
    expected = sum(reference(h) for h in captured_outputs(model, x))
    with make({"conv": model.conv, "fc": model.fc}) as pen:
        model(x)
        got = pen.loss()
        assert got.requires_grad
        assert float(got.detach()) == pytest.approx(expected, rel=1e-12)
        assert set(pen.penalty(per_layer=True)) == {"conv", "fc"}
        assert 0.3 * pen.penalty() == pytest.approx(expected, rel=1e-12)


def test_l1_and_l2_gradients_by_hand():
    x = torch.randn(4, 3, generator=gen(2), dtype=F64, requires_grad=True)
    tap = nn.Identity()
    with L1Penalty(tap, lam=2.0) as l1:
        tap(x)
        l1.loss().backward()
    assert torch.allclose(x.grad, 2.0 * torch.sign(x) / x.numel())
    x.grad = None
    with L2Penalty(tap, lam=2.0) as l2:
        tap(x)
        l2.loss().backward()
    assert torch.allclose(x.grad, 2.0 * 2 * x / x.numel())


@pytest.mark.parametrize(
    "make",
    [lambda m: L1Penalty(m, 0.7), lambda m: L2Penalty(m, 0.7), lambda m: VCL(m, 0.7), lambda m: VCL(m, 0.7, 3)],
    ids=["l1", "l2", "vcl", "vcl_n3"],
)
def test_penalty_gradients_match_finite_differences(make):
    x = torch.randn(10, 2, 3, generator=gen(3), dtype=F64, requires_grad=True) + 0.5
    tap = nn.Identity()
    pen = make(tap)

    def f(inp: torch.Tensor) -> torch.Tensor:
        tap(inp)
        return pen.loss()

    assert torch.autograd.gradcheck(f, (x,))
    pen.remove()


def test_penalty_bookkeeping():
    model = TwoLayers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pen = L2Penalty([model.conv, model.fc], lam=1.0)
    x = torch.randn(4, 2, 4, 4, generator=gen(4))
    model(x)
    one = pen.loss()
    model(x)
    model(x)
    assert float(pen.loss().detach()) == pytest.approx(
        2 * float(one.detach())
    )  # sums every forward since the last call
    assert float(pen.loss().detach()) == 0.0  # and starts over
    with torch.no_grad():
        model(x)  # evaluation passes add nothing
    assert float(pen.loss().detach()) == 0.0
    pen.remove()
    model(x)
    assert float(pen.loss().detach()) == 0.0
    assert model.state_dict().keys() == before.keys() and sum(1 for _ in model.parameters()) == 4  # nothing added
    with pytest.raises(ValueError, match="lam"):
        L1Penalty(model.conv, lam=-1.0)
    with pytest.raises(TypeError, match="recurrent"):
        VCL(nn.LSTM(2, 2), lam=1.0)


def test_vcl_skips_batches_too_small_for_two_variances():
    tap = nn.Identity()
    with VCL(tap, lam=1.0) as vcl:
        tap(torch.randn(3, 4, requires_grad=True))
        assert float(vcl.loss().detach()) == 0.0
        x = torch.randn(6, 4, dtype=F64, requires_grad=True)
        tap(x)  # 6 < 2 * 5: two subsets of 3
        assert float(vcl.loss().detach()) == pytest.approx(vcl_numpy(x.detach().numpy(), 3, 1.0))


def test_vcl_learned_betas_are_the_papers_350k_on_the_11_layer_cnn():
    model = build_model("cnn11")
    vcl = VCL(model.pre_activations(), lam=0.01, learn_beta=True)
    assert list(vcl.parameters()) == []
    model(torch.randn(10, 3, 32, 32, generator=gen(5)))
    betas = list(vcl.parameters())
    assert sum(b.numel() for b in betas) == 350_460  # "VCL ~350K" parameters in the PER paper
    assert tuple(betas[0].shape) == (192, 32, 32)
    vcl.loss().backward()
    assert all(b.grad is not None for b in betas)
    state = vcl.state_dict()
    restored = VCL(model.pre_activations(), lam=0.01, learn_beta=True)
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(restored.parameters(), betas, strict=True))
    vcl.remove()
    restored.remove()


def test_vcl_keeps_a_learned_beta_positive():
    tap = nn.Identity()
    with VCL(tap, lam=1.0, learn_beta=True) as vcl:
        tap(torch.randn(10, 3, requires_grad=True))
        (beta,) = vcl.parameters()
        with torch.no_grad():
            beta.fill_(-5.0)
        x = torch.randn(10, 3, dtype=torch.float32, requires_grad=True)
        tap(x)
        assert beta.min().item() == pytest.approx(VCL.BETA_MIN)
        vcl.loss()


# --- decorrelated batch normalization --------------------------------------------------------


def correlated_images(n: int = 64, c: int = 10, seed: int = 6) -> torch.Tensor:
    g = gen(seed)
    mix = torch.randn(c, c, generator=g, dtype=F64)
    z = torch.randn(n, 5, 5, c, generator=g, dtype=F64)
    return (z @ mix.T).permute(0, 3, 1, 2) + 3.0  # (N, H, W, C) -> (N, C, H, W), correlated channels, mean 3


def group_rows(y: torch.Tensor, channels: slice) -> np.ndarray:
    return y[:, channels].transpose(0, 1).reshape(channels.stop - channels.start, -1).detach().numpy()


def test_dbn_training_output_is_white_per_group():
    x = correlated_images()
    dbn = DecorrelatedBatchNorm2d(10, group_size=4, eps=1e-10).double()  # groups of 4, 4 and 2 channels
    y = dbn(x)
    for group in (slice(0, 4), slice(4, 8), slice(8, 10)):
        rows = group_rows(y, group)
        assert np.allclose(rows.mean(axis=1), 0.0, atol=1e-10)
        assert np.allclose(np.cov(rows, bias=True), np.eye(rows.shape[0]), atol=1e-8)
    # channels of different groups stay correlated: it is group whitening, not full whitening
    assert abs(np.corrcoef(group_rows(y, slice(0, 10)))[0, 4]) > 1e-3


def test_dbn_whitening_is_zca_the_symmetric_inverse_square_root():
    x = correlated_images()
    dbn = DecorrelatedBatchNorm2d(10, group_size=4, eps=1e-5, momentum=1.0).double()  # running = this batch
    y = dbn(x)
    rows = group_rows(x, slice(0, 4))
    xc = rows - rows.mean(axis=1, keepdims=True)
    sigma = xc @ xc.T / xc.shape[1] + 1e-5 * np.eye(4)
    w = dbn.running_whitening[0].numpy()
    assert np.allclose(w, w.T, atol=1e-12)
    assert np.allclose(w, scipy.linalg.fractional_matrix_power(sigma, -0.5), atol=1e-10)
    assert np.allclose(group_rows(y, slice(0, 4)), w @ xc, atol=1e-10)
    # ZCA is the whitening closest to the centered input: any other whitening Q W (Q orthogonal) is farther
    dist = np.linalg.norm(w @ xc - xc)
    for seed in range(5):
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((4, 4)))
        assert dist < np.linalg.norm(q @ w @ xc - xc)


def test_dbn_eval_uses_running_statistics():
    dbn = DecorrelatedBatchNorm2d(6, group_size=4, momentum=0.5).double()
    with torch.no_grad():
        dbn.weight.copy_(torch.arange(1.0, 7.0))
        dbn.bias.copy_(torch.arange(6.0) / 10)
    for seed in (7, 8, 9):
        dbn(correlated_images(c=6, seed=seed))
    dbn.eval()
    x = correlated_images(n=3, c=6, seed=10)
    y = dbn(x)
    rows = x.transpose(0, 1).reshape(6, -1) - dbn.running_mean.unsqueeze(1)  # (C, N*H*W), by hand
    white = torch.cat([dbn.running_whitening[0] @ rows[:4], dbn.running_whitening_rest[0] @ rows[4:]])
    expected = (dbn.weight.unsqueeze(1) * white + dbn.bias.unsqueeze(1)).reshape(6, 3, 5, 5).transpose(0, 1)
    assert torch.allclose(y, expected)
    assert torch.allclose(dbn(x[:1]), y[:1])  # a sample's output does not depend on the batch
    assert not torch.allclose(dbn.running_whitening[0], torch.eye(4, dtype=F64))


def test_inverse_sqrt_backward_matches_finite_differences_and_survives_equal_eigenvalues():
    a = torch.randn(2, 3, 3, generator=gen(11), dtype=F64, requires_grad=True)

    def f(m: torch.Tensor) -> torch.Tensor:
        return inverse_sqrt_spd(m @ m.transpose(1, 2) + torch.eye(3, dtype=F64))

    assert torch.autograd.gradcheck(f, (a,))
    eye = torch.eye(3, dtype=F64, requires_grad=True)  # all eigenvalues equal: d(S^-1/2) = -dS / 2 at S = I
    g = torch.randn(3, 3, generator=gen(12), dtype=F64)
    (inverse_sqrt_spd(eye) * g).sum().backward()
    assert torch.allclose(eye.grad, -0.25 * (g + g.T))


def test_dbn_training_forward_gradients_match_finite_differences():
    dbn = DecorrelatedBatchNorm2d(5, group_size=3).double()
    x = torch.randn(6, 5, 2, 2, generator=gen(13), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: dbn(inp), (x,))


def test_make_norm_builds_each_normalization():
    assert isinstance(make_norm("none", 8), nn.Identity)
    assert isinstance(make_norm("bn", 8), nn.BatchNorm2d)
    assert isinstance(make_norm("dbn", 8), DecorrelatedBatchNorm2d)
    with pytest.raises(ValueError, match="'none', 'bn' or 'dbn'"):
        make_norm("ln", 8)


# --- recurrent batch normalization -----------------------------------------------------------


def test_recurrent_bn_lstm_shapes_and_initial_gains():
    lstm = RecurrentBatchNormLSTM(3, 4, max_steps=5)
    out, (h, c) = lstm(torch.randn(7, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    assert out.shape == (7, 2, 4) and h.shape == c.shape == (1, 2, 4)
    assert torch.equal(out[-1], h[0])
    for bn in (lstm.bn_ih, lstm.bn_hh, lstm.bn_c):
        assert torch.equal(bn.weight, torch.full_like(bn.weight, 0.1))
    assert lstm.bn_ih.bias is None and lstm.bn_hh.bias is None and lstm.bn_c.bias is not None
    out.sum().backward()
    assert all(p.grad is not None for p in lstm.parameters())


def test_recurrent_bn_lstm_two_steps_by_hand():
    torch.manual_seed(0)
    lstm = RecurrentBatchNormLSTM(3, 2, max_steps=4, eps=1e-5).double()
    with torch.no_grad():
        lstm.bias.copy_(torch.linspace(-1, 1, 8))
        lstm.bn_c.bias.fill_(0.3)
        for bn_ in (lstm.bn_ih, lstm.bn_hh, lstm.bn_c):
            bn_.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 3, generator=gen(14), dtype=F64)
    h0, c0 = torch.randn(2, 1, 6, 2, generator=gen(15), dtype=F64)
    out, (h_last, c_last) = lstm(x, (h0, c0))

    def bn(v: torch.Tensor, gamma: torch.Tensor, beta: float | torch.Tensor = 0.0) -> torch.Tensor:
        return gamma * (v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + 1e-5) + beta  # batch statistics

    h, c = h0[0], c0[0]
    for t in range(2):
        gates = bn(h @ lstm.weight_hh.T, lstm.bn_hh.weight) + bn(x[t] @ lstm.weight_ih.T, lstm.bn_ih.weight)
        i, f, g, o = (gates + lstm.bias).chunk(4, dim=1)  # gate order of nn.LSTM
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(bn(c, lstm.bn_c.weight, lstm.bn_c.bias))
        assert torch.allclose(out[t], h)
    assert torch.allclose(h_last[0], h) and torch.allclose(c_last[0], c)


def test_recurrent_bn_keeps_separate_statistics_per_time_step():
    lstm = RecurrentBatchNormLSTM(3, 4, max_steps=6, momentum=1.0)
    scales = torch.arange(1.0, 5.0).view(4, 1, 1)  # the input's scale grows with t
    lstm(torch.randn(4, 32, 3, generator=gen(15)) * scales + scales)
    mean, var = lstm.bn_ih.running_mean, lstm.bn_ih.running_var
    assert all(not torch.allclose(mean[t], mean[t + 1]) for t in range(3))
    assert (var[3].mean() / var[0].mean()) > 8  # variance grows like the scale squared
    assert torch.equal(mean[4:], torch.zeros(2, 16)) and torch.equal(var[4:], torch.ones(2, 16))  # unseen steps
    assert lstm.bn_c.running_var[1:4].ne(1).all()


def test_recurrent_bn_eval_uses_running_statistics():
    lstm = RecurrentBatchNormLSTM(3, 4, max_steps=6)
    x = torch.randn(5, 8, 3, generator=gen(16))
    train_out, _ = lstm(x)
    lstm.eval()
    eval_out, _ = lstm(x)
    assert not torch.allclose(train_out, eval_out)
    alone, _ = lstm(x[:, :1])
    assert torch.allclose(alone[:, 0], eval_out[:, 0], atol=1e-6)  # no batch dependence in eval


def test_stepwise_bn_reuses_the_last_statistics_beyond_max_steps():
    bn = StepwiseBatchNorm1d(2, max_steps=3, gamma_init=1.0, eps=1e-12)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
        bn.running_var.copy_(torch.tensor([[1.0, 1.0], [4.0, 4.0], [16.0, 16.0]]))
    x = torch.tensor([[6.0, 10.0]])
    bn.eval()
    assert torch.allclose(bn(x, 1), torch.tensor([[2.5, 4.5]]))
    assert torch.allclose(bn(x, 2), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(bn(x, 10), bn(x, 2))
    bn.train()
    before = bn.running_mean.clone(), bn.running_var.clone()
    bn(torch.randn(4, 2), 7)  # beyond max_steps: batch statistics, nothing updated
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    bn(torch.randn(4, 2) + 5, 0)
    assert not torch.equal(bn.running_mean[0], before[0][0]) and torch.equal(bn.running_mean[1:], before[0][1:])


@pytest.mark.parametrize("penalty", [L1Penalty, L2Penalty, VCL])
def test_penalties_take_numpy_weights_and_refuse_what_is_not_a_weight(penalty):
    # a notebook's lambda grid (np.logspace) hands over numpy scalars; PER takes them, so do the baselines
    model = TwoLayers()
    pen = penalty(model.fc, lam=np.float32(0.25))  # not a float subclass, unlike np.float64
    assert pen.lam == 0.25 and type(pen.lam) is float
    for bad in (True, "0.1", float("nan"), -np.float32(1.0), None):
        with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
            penalty(model.fc, lam=bad)


def test_vcl_takes_numpy_sample_size_and_beta_and_refuses_fractions():
    vcl = VCL(TwoLayers().fc, lam=1.0, sample_size=np.int64(3), beta=np.float32(0.5))
    assert vcl.sample_size == 3 and vcl.beta == 0.5
    with pytest.raises(ValueError, match="sample_size"):
        VCL(TwoLayers().fc, lam=1.0, sample_size=2.5)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        VCL(TwoLayers().fc, lam=1.0, beta="1")


@pytest.mark.parametrize(("n", "hw"), [(1, 1), (2, 1), (4, 1), (1, 2)])
def test_dbn_keeps_a_batch_with_no_more_samples_than_group_channels_out_of_its_statistics(n, hw):
    # before: M <= group size left a singular covariance whose eps eigenvalues put 1/sqrt(eps) ~ 316 into the running
    # whitening, silently: after 20 such batches, eval outputs of N(0, 1) inputs had std 76-276
    dbn = DecorrelatedBatchNorm2d(4, group_size=4).train()
    before = dbn.running_whitening.clone()
    for _ in range(20):
        with pytest.warns(RuntimeWarning, match=rf"{n * hw * hw} samples per channel .* of 4 channels.*larger batch"):
            dbn(torch.randn(n, 4, hw, hw))
    assert torch.equal(dbn.running_whitening, before)  # not averaged in
    z = torch.randn(2000, 4, 1, 1, generator=gen(3))
    with torch.no_grad():
        assert 0.9 < float(dbn.eval()(z).std()) < 1.1  # before: 76-276
    dbn.train()(torch.randn(5, 4, 1, 1))  # 5 > 4: whitened and averaged
    assert not torch.equal(dbn.running_whitening, before)
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        DecorrelatedBatchNorm2d(4, 2.5)
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        DecorrelatedBatchNorm2d(4.5, 2)


@pytest.mark.parametrize(
    "make", [lambda: RecurrentBatchNormLSTM(3, 4), lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4, batch_first=True)]
)
def test_vcl_refuses_every_recurrent_module_without_contradicting_itself(make):
    # before: a time-major RecurrentBatchNormLSTM was accepted (time steps taken as samples), and the refusal of an
    # nn.LSTM said "needs batch-first outputs" also when it had them (packed, or of varying length, they still fail)
    with pytest.raises(TypeError, match="does not take recurrent modules .* time-major or packed and change length"):
        VCL(make(), 1.0, sample_size=2)


def test_recurrent_bn_argument_errors_name_the_argument_and_what_to_pass():
    # before: momentum=None failed at the first forward inside F.batch_norm, hx of (2, N, H) gave "shape '[5, 4]' is
    # invalid", hx of (N, H) was silently accepted, and a training batch of 1 gave PyTorch's bare message
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\], got None"):
        StepwiseBatchNorm1d(4, 3, momentum=None)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        StepwiseBatchNorm1d(4, 0)
    lstm = RecurrentBatchNormLSTM(3, 4)
    x = torch.randn(6, 5, 3)
    for bad in ((torch.zeros(2, 5, 4), torch.zeros(2, 5, 4)), (torch.zeros(5, 4), torch.zeros(5, 4))):
        with pytest.raises(ValueError, match=r"hx must be \(h0, c0\), each of shape \(1, 5, 4\)"):
            lstm(x, bad)
    out, (h, c) = lstm(x, (torch.zeros(1, 5, 4), torch.zeros(1, 5, 4)))
    assert out.shape == (6, 5, 4) and h.shape == c.shape == (1, 5, 4)
    with pytest.raises(ValueError, match="at least 2 sequences per batch .* got 1"):
        lstm.train()(torch.randn(6, 1, 3))
    assert lstm.eval()(torch.randn(6, 1, 3))[0].shape == (6, 1, 4)


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_dbn_of_a_rank_deficient_group_at_a_large_scale_matches_float64(scale):
    # a review: in float32 the eps of the covariance was lost to rounding once the channels' std exceeded ~5, a dead
    # channel then gave eigenvalues below 0, clamped to the smallest float: outputs of 1e14 and NaN gradients
    torch.manual_seed(0)
    x = torch.randn(64, 16, 6, 6) * scale
    x[:, 3] = 0.0
    r = torch.randn_like(x)
    x32, x64 = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    y32, y64 = DecorrelatedBatchNorm2d(16)(x32), DecorrelatedBatchNorm2d(16).double()(x64)
    (y32 * r).sum().backward()
    (y64 * r.double()).sum().backward()
    assert (y32.double() - y64).abs().max() < 1e-4 * y64.abs().max()
    assert torch.linalg.norm(x32.grad.double() - x64.grad) < 1e-5 * torch.linalg.norm(x64.grad)


def test_dbn_in_half_precision_its_layout_momentum_and_second_derivative():
    # a review: half inputs failed in training (no eigh for them); the output was laid out (C, N, H, W), slowing the
    # next conv; momentum=None failed at the first forward; a second derivative was silently wrong
    x = torch.randn(16, 8, 4, 4)
    for dtype in (torch.float16, torch.bfloat16):
        y = DecorrelatedBatchNorm2d(8, 4).to(dtype)(x.to(dtype))
        ref = DecorrelatedBatchNorm2d(8, 4).double()(x.to(dtype).double())
        assert y.dtype == dtype and (y.double() - ref).abs().max() < 0.05
    assert DecorrelatedBatchNorm2d(8, 4)(x).is_contiguous()
    cl = DecorrelatedBatchNorm2d(8, 4)(x.to(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    for bad in (None, 5.0, True):
        with pytest.raises(ValueError, match="momentum must be a number in"):
            DecorrelatedBatchNorm2d(8, momentum=bad)
    s = torch.randn(4, 4, dtype=torch.float64)
    s = (s @ s.T + torch.eye(4, dtype=torch.float64)).requires_grad_(True)
    r = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)  # the incoming gradient depends on r
    (g,) = torch.autograd.grad((inverse_sqrt_spd(s) * r).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_penalty_after_a_loss_that_recorded_nothing_is_zero():
    # a review: after a step whose passes all ran without grad, loss() returned 0 and penalty() the previous step's
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    reg = L2Penalty(net[0], lam=1.0)
    with pytest.raises(RuntimeError, match="loss\\(\\) has not been called yet"):
        reg.penalty()
    net(torch.randn(8, 3))
    assert float(reg.loss().detach()) > 0 and reg.penalty() > 0
    with torch.no_grad():
        net(torch.randn(8, 3))
    assert float(reg.loss()) == 0.0 and reg.penalty() == 0.0 and reg.penalty(per_layer=True) == {}


def test_dbn_keeps_no_float64_copy_of_the_activation_for_backward():
    # a review: the float64 covariance kept a float64 copy of the whole activation for backward (twice the memory)
    x = torch.randn(32, 16, 8, 8, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        DecorrelatedBatchNorm2d(16)(x)
    assert not [t for t in saved if t.dtype == torch.float64 and t.numel() >= x.numel()]  # only m x m ones


def test_dbn_backward_in_float16_stays_finite_on_a_near_singular_group_under_loss_scaling():
    # a review: the covariance's backward ran in float16, and dL/dSigma (~1/lambda^1.5) overflowed: inf/NaN
    # gradients on channels of variance 1e-6 once a loss scale applied
    torch.manual_seed(0)
    x = torch.randn(16, 8, 4, 4) * torch.logspace(-3, 0, 8).view(1, 8, 1, 1)
    r = torch.randn_like(x)
    for scale in (1.0, 256.0, 65536.0):
        xh, x64 = x.half().requires_grad_(True), x.half().double().requires_grad_(True)
        (DecorrelatedBatchNorm2d(8, 8).half()(xh).float() * r).mean().mul(scale).backward()
        (DecorrelatedBatchNorm2d(8, 8).double()(x64) * r.double()).mean().mul(scale).backward()
        assert x64.grad.abs().max() < 6e4  # the true gradient fits in float16
        assert torch.isfinite(xh.grad).all(), scale
