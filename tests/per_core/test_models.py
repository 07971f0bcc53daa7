"""Models: the parameter counts their files state, the architectures, and the pre-activation contract."""

import math

import pytest
import torch
from torch import nn

from per_core import PER
from per_core.baselines import DecorrelatedBatchNorm2d, RecurrentBatchNormLSTM
from per_core.models import MODELS, build_model
from per_core.models.lstm_lm import LockedDropout, embedding_dropout

# the example batches are small: cnn11's last DBN layers (1x1 maps) see fewer samples than their 16 channels and say
# so (test_baselines checks that warning); these tests are about the models' structure
pytestmark = pytest.mark.filterwarnings("ignore:DecorrelatedBatchNorm2d.*cannot estimate:RuntimeWarning")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(n: int = 2, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def tokens(t: int = 5, n: int = 3, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (t, n), generator=torch.Generator().manual_seed(seed))


SMALL_LM = {"vocab_size": 50, "hidden": 16}

#: One example per registered model: factory keyword arguments and an input. A new model needs one here.
EXAMPLES = {
    "small_cnn": ({}, lambda: images(2, 1, 8)),
    "resnet20": ({}, images),
    "resnet32": ({}, images),
    "resnet44": ({}, images),
    "resnet56": ({}, images),
    "resnet110": ({}, images),
    "cnn11": ({}, images),
    "lstm_lm": (SMALL_LM, tokens),
}

#: Variants checked beside the defaults: (name, keyword arguments).
VARIANTS = [(name, kwargs) for name, (kwargs, _) in EXAMPLES.items()] + [
    ("small_cnn", {"norm": "bn"}),
    ("resnet20", {"norm": "bn"}),
    ("resnet20", {"norm": "dbn"}),
    ("cnn11", {"norm": "bn", "activation": "relu"}),
    ("cnn11", {"norm": "dbn", "activation": "leaky_relu"}),
    ("lstm_lm", {**SMALL_LM, "norm": "rbn", "tied": True, "dropout": 0.3}),
]


def variant_id(v) -> str:
    name, kwargs = v
    extra = ",".join(f"{k}={val}" for k, val in kwargs.items() if k not in SMALL_LM)
    return f"{name}[{extra}]" if extra else name


# --- parameter counts (the numbers stated in each model file) ---------------------------------


@pytest.mark.parametrize(("norm", "count"), [("none", 46_890), ("bn", 47_082)])
def test_small_cnn_parameter_counts_match_its_docstring(norm, count):
    model = build_model("small_cnn", norm=norm)
    assert n_params(model) == count


@pytest.mark.parametrize(
    ("name", "bn", "fixup"),
    [
        ("resnet20", 269_722, 268_393),
        ("resnet32", 464_154, 461_959),
        ("resnet44", 658_586, 655_525),
        ("resnet56", 853_018, 849_091),
        ("resnet110", 1_727_962, 1_720_138),
    ],
)
def test_resnet_parameter_counts_match_the_docstring_and_the_literature(name, bn, fixup):
    assert n_params(build_model(name, norm="bn")) == bn
    assert n_params(build_model(name, norm="dbn")) == bn
    assert n_params(build_model(name, norm="none")) == fixup
    literature = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6, "resnet110": 1.7e6}
    assert bn == pytest.approx(literature[name], rel=0.02)  # He et al. 2016, Table 6
    assert n_params(build_model(name, norm="bn", num_classes=100)) == bn + 90 * 65


def test_resnet_fixup_adds_five_scalars_per_block_and_two_more():
    n_blocks = 3 * 3
    bn_params = 2 * (16 + 2 * 3 * (16 + 32 + 64))  # stem BN + two BNs per block
    assert n_params(build_model("resnet20", norm="none")) == 269_722 - bn_params + 5 * n_blocks + 2


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        ({}, 1_641_938),
        ({"num_classes": 100}, 1_669_028),
        ({"norm": "bn"}, 1_641_938 + 2_544),
        ({"norm": "dbn"}, 1_641_938 + 2_544),
    ],
)
def test_cnn11_parameter_counts_match_its_docstring(kwargs, count):
    assert n_params(build_model("cnn11", **kwargs)) == count


def test_cnn11_bn_overhead_is_the_papers_2_5k():
    widths = (192, 192, 240, 240, 260, 260, 280, 280, 300, 300)
    assert n_params(build_model("cnn11", norm="bn")) - n_params(build_model("cnn11")) == sum(widths) == 2_544


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        ({}, 19_780_400),
        ({"tied": True}, 13_280_400),
        ({"norm": "rbn"}, 19_788_200),
        ({"vocab_size": 33_278}, 50_065_078),
        ({"vocab_size": 33_278, "tied": True}, 28_434_378),
    ],
)
def test_lstm_lm_parameter_counts_match_its_docstring(kwargs, count):
    kwargs = {"vocab_size": 10_000, **kwargs}
    assert n_params(build_model("lstm_lm", **kwargs)) == count


def test_lstm_lm_count_by_hand():
    v, h = 10_000, 650
    lstm_layer = 4 * h * (h + h) + 2 * 4 * h
    assert n_params(build_model("lstm_lm", vocab_size=v)) == v * h + 2 * lstm_layer + h * v + v


# --- the pre-activation contract -------------------------------------------------------------


def test_every_registered_model_has_an_example():
    assert set(EXAMPLES) == set(MODELS)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_every_model_lists_its_pre_activations_in_depth_order(variant):
    name, kwargs = variant
    model = build_model(name, **kwargs)
    pre = model.pre_activations()
    assert pre, "a model lists at least one pre-activation"
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.append(k)) for k, m in pre.items()]
    model(EXAMPLES[name][1]())
    for h in hooks:
        h.remove()
    assert seen == list(pre)


@pytest.mark.parametrize("depth", [20, 110])
def test_resnet_has_one_pre_activation_per_hidden_conv(depth):
    model = build_model(f"resnet{depth}")
    pre = model.pre_activations()
    assert list(pre) == [f"layer{k}" for k in range(1, depth)]
    assert len(pre) == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*small_cnn"):
        build_model("resnet9000")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_per_attaches_to_every_model_and_changes_its_gradients(variant):
    name, kwargs = variant

    def grads(lam: float | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(name, **kwargs)
        x = EXAMPLES[name][1]()
        per = PER(model.pre_activations(), lam, n_slices=16) if lam is not None else None
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        logits.logsumexp(-1).mean().backward()
        if per is not None:
            per.remove()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    vanilla, zero, per = grads(None), grads(0.0), grads(1.0)
    assert all(torch.equal(a, b) for a, b in zip(vanilla, zero, strict=True))
    assert any(not torch.allclose(a, b) for a, b in zip(vanilla, per, strict=True))


# --- CIFAR ResNets ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "bn", "dbn"])
def test_resnet_forward_shape(norm):
    model = build_model("resnet20", norm=norm, num_classes=100)
    assert model(images()).shape == (2, 100)
    model.eval()
    assert model(images()).shape == (2, 100)


def test_resnet_normalized_variants_use_their_norm_and_bias_free_convs():
    bn, dbn, fixup = (build_model("resnet20", norm=n) for n in ("bn", "dbn", "none"))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 19
    assert sum(isinstance(m, DecorrelatedBatchNorm2d) for m in dbn.modules()) == 19
    assert not any(isinstance(m, nn.BatchNorm2d | DecorrelatedBatchNorm2d) for m in fixup.modules())
    assert all(m.bias is None for m in bn.modules() if isinstance(m, nn.Conv2d))


def test_resnet_shortcuts_are_parameter_free_option_a():
    model = build_model("resnet20", norm="bn")
    block = model.blocks[3]  # first block of stage 2: 16 -> 32 channels, stride 2
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    assert torch.equal(s[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(s[:, 16:], torch.zeros(2, 16, 4, 4))
    assert model.blocks[4].shortcut(s) is s  # same width, stride 1: the identity itself


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_fixup_residual_branches_output_zero_and_logits_are_zero_at_init(name):
    model = build_model(name, norm="none")
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in model.blocks]
    logits = model(images())
    for h in hooks:
        h.remove()
    assert torch.equal(logits, torch.zeros(2, 10))
    for block, x in zip(model.blocks, inputs, strict=True):
        assert torch.equal(block.branch(x), torch.zeros_like(block.shortcut(x)))
        assert x.abs().sum() > 0  # the signal itself is not zero: the blocks are identities


def test_fixup_initialization_scales():
    model = build_model("resnet110", norm="none")
    n_blocks = len(model.blocks)  # L = 54 residual branches
    w = torch.cat([b.conv1.weight.detach().flatten() for b in model.blocks[-17:]])  # stage 3: (64, 64, 3, 3) each
    expected_std = math.sqrt(2 / (64 * 9)) * n_blocks**-0.5  # He (fan-out) x L^(-1/(2m-2)), m = 2
    assert float(w.std()) == pytest.approx(expected_std, rel=0.02)
    assert all(torch.equal(b.conv2.weight, torch.zeros_like(b.conv2.weight)) for b in model.blocks)
    assert torch.equal(model.fc.weight, torch.zeros_like(model.fc.weight))
    scalars = [p for b in model.blocks for p in b.parameters() if p.numel() == 1]
    assert len(scalars) == 5 * n_blocks
    assert [p.item() for p in scalars].count(1.0) == n_blocks  # one multiplier per branch, the rest biases


# --- the 11-layer CNN ------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu"])
def test_cnn11_forward_shape_and_activation(activation):
    model = build_model("cnn11", num_classes=100, activation=activation)
    assert model(images()).shape == (2, 100)
    act = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}[activation]
    assert sum(isinstance(m, act) for m in model.modules()) == 10


def test_cnn11_layout_kernels_pools_and_dropout():
    model = build_model("cnn11").eval()
    sizes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, tuple(o.shape[1:])))
        for k, m in model.pre_activations().items()
    ]
    model(images())
    for h in hooks:
        h.remove()
    widths = (192, 192, 240, 240, 260, 260, 280, 280, 300, 300)
    spatial = (32, 16, 16, 8, 8, 4, 4, 2, 2, 1)
    assert list(sizes.values()) == [(c, s, s) for c, s in zip(widths, spatial, strict=True)]
    assert [layer.conv.kernel_size[0] for layer in model.layers] == [5, 1, 3, 1, 2, 1, 2, 1, 2, 1]
    rates = [layer.drop.p if isinstance(layer.drop, nn.Dropout) else 0.0 for layer in model.layers]
    assert rates == [0.0, 0.0, 0.1, 0.0, 0.2, 0.0, 0.3, 0.0, 0.4, 0.5]
    assert model.classifier.kernel_size == (1, 1)


# --- the LSTM language model -----------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "rbn"])
def test_lstm_lm_forward_and_hidden_shapes(norm):
    model = build_model("lstm_lm", **SMALL_LM, norm=norm)
    hidden = model.init_hidden(3)
    assert [tuple(s.shape) for hc in hidden for s in hc] == [(1, 3, 16)] * 4
    logits, new_hidden = model(tokens(), hidden)
    assert logits.shape == (5, 3, 50)
    assert [tuple(s.shape) for hc in new_hidden for s in hc] == [(1, 3, 16)] * 4
    # the state carries over: the next segment depends on it
    model.eval()
    a, _ = model(tokens(seed=1), model.detach_hidden(new_hidden))
    b, _ = model(tokens(seed=1), model.init_hidden(3))
    assert not torch.allclose(a, b)
    rnn_type = nn.LSTM if norm == "none" else RecurrentBatchNormLSTM
    assert all(isinstance(m, rnn_type) for m in model.pre_activations().values())


def test_tied_embeddings_share_storage():
    model = build_model("lstm_lm", **SMALL_LM, tied=True)
    assert model.decoder.weight is model.encoder.weight
    assert model.decoder.weight.data_ptr() == model.encoder.weight.data_ptr()
    untied = build_model("lstm_lm", **SMALL_LM)
    assert n_params(untied) - n_params(model) == 50 * 16
    logits, _ = model(tokens())
    logits.sum().backward()
    assert model.encoder.weight.grad is not None


def test_locked_dropout_uses_one_mask_for_all_time_steps():
    drop = LockedDropout(0.5)
    torch.manual_seed(0)
    y = drop(torch.ones(7, 4, 32))
    assert torch.equal(y, y[:1].expand_as(y))  # same mask at every t
    assert set(y.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert not torch.equal(y[:, 0], y[:, 1])  # but different masks for different sequences
    assert torch.equal(drop.eval()(torch.ones(7, 4, 32)), torch.ones(7, 4, 32))


def test_lstm_lm_dropout_masks_are_locked_over_time():
    model = build_model("lstm_lm", **SMALL_LM, dropout=0.5)
    seen = []
    model.drop_output.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    torch.manual_seed(0)
    model(tokens(t=6))
    x, y = seen[0]
    ratio = torch.where(x != 0, y / x, torch.zeros_like(x))  # (T, N, H): the mask
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio))


def test_embedding_dropout_drops_whole_words():
    embed = nn.Embedding(10, 8)
    tok = torch.tensor([[1, 2, 1], [2, 1, 3]])
    torch.manual_seed(0)
    out = embedding_dropout(embed, tok, 0.5, training=True)
    for word in (1, 2):
        rows = out[tok == word]  # every occurrence of a word shares its fate
        assert torch.equal(rows, rows[:1].expand_as(rows))
    kept = out[tok == 1][0]
    assert torch.equal(kept, torch.zeros(8)) or torch.allclose(kept, 2 * embed.weight[1])
    assert torch.equal(embedding_dropout(embed, tok, 0.5, training=False), embed(tok))
