"""Goal 1, the conv design: which rows PER uses for a conv layer, at what cost and with what gradient quality.

Three parts, all on ResNet-56 (the model with the narrowest, widest-map convs, hence the hardest case):

1. ``conv_kernel``: PER's backward work on one layer of each stage shape, as a ratio to that layer's
   own 3x3 conv forward+backward (the first measurement in issue 7: ~17x for all locations).
   Variants: all locations with the kernel before issue 7 (``legacy``) and now (through the real
   hook); float64; a ``torch.compile``-d chunk; fewer slices; ``locations=m``; and flattening C x H x W
   per image into one sample, which *changes the method*: the target becomes N(0, I_{CHW}), a
   distribution over whole feature maps (it asks the C*H*W numbers of one image to be i.i.d. N(0,1),
   spatial correlations included), with only N = batch samples in a CHW-dimensional space, instead
   of N(0, I_C) for the channel vector at every location (what BN normalizes).
2. ``conv_quality``: gradient quality of each estimator against a reference with 4096 slices and
   all locations: for every layer, the cosine similarity and the relative mean squared error
   E||g - g_ref||^2 / ||g_ref||^2 of (a) the activation gradient and (b) what SGD actually uses, the
   gradient of the conv weight that produces the layer (the activation gradient pushed through
   ``conv2d_weight``; it sums over all locations and images, so location noise averages out there).
   Median over every third of the 55 layers (19 layers, 3 draws each). The activations are those
   of a Fixup ResNet-56 whose residual branches are switched on (conv2 re-initialized like conv1,
   otherwise every branch outputs 0 at init) on N(0, 1) images: no CIFAR files on this machine.
3. ``conv_step``: the full ResNet-56 training step (batch 128) for each estimator, as a ratio to the
   vanilla step, interleaved with vanilla and BN; plus two attributions of PER's fixed cost: the
   same hooks doing nothing (``hooks_noop``: a forward hook registering a gradient hook that returns
   its argument) and returning a copy of the gradient (``hooks_clone``: what adding a sparse
   correction out of place costs at least).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.common import SHAPES, make_step
from bench.timing import emit, interleaved, progress, standalone_parser
from per_core.models import build_model
from per_core.per import DEFAULT_CHUNK_ELEMENTS, grad_and_loss, per_grad, sample_slices
from per_core.regularizer import PER
from per_core.samples import as_samples, from_samples

__all__ = ["ESTIMATORS", "quality", "run"]

#: (label, locations per image or None for all, slices) of the estimators compared.
ESTIMATORS: list[tuple[str, int | None, int]] = [
    ("all_s256", None, 256),
    ("all_s64", None, 64),
    ("all_s16", None, 16),
    ("m16_s256", 16, 256),
    ("m8_s256", 8, 256),
    ("m4_s256", 4, 256),
    ("m2_s256", 2, 256),
    ("m1_s256", 1, 256),
    ("m16_s64", 16, 64),
]
QUICK_ESTIMATORS = [("all_s256", None, 256), ("m16_s64", 16, 64)]


# --- 1. kernel cost on one layer -------------------------------------------------------------------


def _legacy_grad(x: Tensor, theta: Tensor, chunk_elements: int = 1 << 22) -> Tensor:
    """PER's gradient kernel before issue 7 (for the before/after line): a fresh (chunk x s) block per
    chunk of 2^22 elements, a separate scaling pass before erf, the mean applied at the end."""
    n, s = x.shape[0], theta.shape[0]
    grad = torch.empty_like(x)
    step = max(1, chunk_elements // s)
    for i in range(0, n, step):
        e = torch.erf((x[i : i + step] @ theta.T) / math.sqrt(2.0))
        torch.matmul(e, theta, out=grad[i : i + step])
    return grad / (n * s)


def _compiled_chunk() -> Callable[[Tensor, Tensor, Tensor], Tensor] | None:
    """``erf(x @ t_in) @ t_out`` compiled by inductor, or None when torch.compile does not work here."""

    def chunk(x: Tensor, t_in: Tensor, t_out: Tensor) -> Tensor:
        return torch.erf(x @ t_in) @ t_out

    try:
        fn = torch.compile(chunk, dynamic=False)
        fn(torch.randn(8, 4), torch.randn(4, 16), torch.randn(16, 4))
        return fn
    except Exception as exc:  # no compiler, unsupported build: report and skip
        progress(f"torch.compile unavailable ({type(exc).__name__}: {str(exc)[:120]})")
        return None


def kernel_table(quick: bool, repeats: int) -> list[str]:
    """Per-layer PER cost / conv fwd+bwd for the three ResNet-56 stage shapes."""
    lines = []
    compiled = None if quick else _compiled_chunk()
    batch = 2 if quick else 128
    for c, hw in ((16, 8),) if quick else ((16, 32), (32, 16), (64, 8)):
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        x = torch.randn(batch, c, hw, hw, requires_grad=True)
        h = conv(x).detach()
        grad = torch.randn_like(h)
        theta = sample_slices(256, c)
        rows = as_samples(h).contiguous()
        n_rows = rows.shape[0]

        def conv_fb(conv=conv, x=x) -> None:
            conv(x).sum().backward()

        def sampled(m: int | None, s: int, h=h, grad=grad) -> Callable[[], None]:
            """The real hook path (pick, gather, kernel, add or clone + scatter) on a leaf copy of h."""
            ident, leaf = nn.Identity(), h.clone().requires_grad_()
            PER(ident, 1e-4, s, locations=m)

            def fn() -> None:
                ident(leaf.view_as(leaf)).backward(grad)  # a fresh view per call: one hook per call
                leaf.grad = None

            return fn

        fns: dict[str, Callable[[], object]] = {
            "conv_fwd_bwd": conv_fb,
            "all_s256_legacy": lambda h=h, theta=theta, grad=grad: (
                grad + 1e-4 * from_samples(_legacy_grad(as_samples(h), theta), h.shape)
            ),
            "all_s256": sampled(None, 256),
            "all_s256_float64": lambda rows=rows, theta=theta: grad_and_loss(
                rows.double(), theta.double(), False, DEFAULT_CHUNK_ELEMENTS
            ),
            "all_s64": sampled(None, 64),
            "m16_s256": sampled(16, 256),
            "m4_s256": sampled(4, 256),
            "flatten_chw_s256": lambda h=h: per_grad(h.reshape(h.shape[0], -1), 256),
        }
        if compiled is not None:
            t_in, t_out = theta.T / math.sqrt(2), theta / (n_rows * 256)
            step = DEFAULT_CHUNK_ELEMENTS // 256

            def comp(rows=rows, t_in=t_in, t_out=t_out, step=step) -> Tensor:
                return torch.cat([compiled(rows[i : i + step], t_in, t_out) for i in range(0, len(rows), step)])

            def eager(rows=rows, t_in=t_in, t_out=t_out, step=step) -> Tensor:
                return torch.cat([torch.erf(rows[i : i + step] @ t_in) @ t_out for i in range(0, len(rows), step)])

            fns["chunk_eager"], fns["chunk_compiled"] = eager, comp
        t = interleaved(fns, repeats=repeats, warmup=1, quiet_wait=0 if quick else 30)
        ctx = {"shape": f"{batch}x{c}x{hw}x{hw}", "rows": n_rows}
        for name in fns:
            if name == "conv_fwd_bwd":
                continue
            lines.append(emit(f"conv_kernel/{name}/c{c}", t.ratio(name, "conv_fwd_bwd"), per="conv_fwd_bwd", **ctx))
        if compiled is not None:
            lines.append(emit(f"conv_kernel/compiled_over_eager/c{c}", t.ratio("chunk_compiled", "chunk_eager"), **ctx))
        lines.append(emit(f"conv_kernel/new_over_legacy/c{c}", t.ratio("all_s256", "all_s256_legacy"), **ctx))
    return lines


# --- 2. gradient quality ---------------------------------------------------------------------------


@dataclass
class Layer:
    """One regularized activation h and the conv (with its input) that produced it."""

    name: str
    h: Tensor
    conv: nn.Conv2d
    conv_in: Tensor


def capture_layers(model: nn.Module, x: Tensor) -> list[Layer]:
    """Run ``model`` on ``x`` and keep every ``pre_activations()`` output with the last conv before it."""
    last: dict[str, object] = {}
    layers: list[Layer] = []
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda mod, args, out: last.update(conv=mod, x=args[0])))
    for name, m in model.pre_activations().items():

        def tap(mod, args, out, name=name) -> None:
            layers.append(Layer(name, out.detach().clone(), last["conv"], last["x"].detach()))

        handles.append(m.register_forward_hook(tap))
    with torch.no_grad():
        model(x)
    for hd in handles:
        hd.remove()
    return layers


def _weight_grad(layer: Layer, g: Tensor) -> Tensor:
    c = layer.conv
    return nn.grad.conv2d_weight(layer.conv_in, c.weight.shape, g, c.stride, c.padding, c.dilation, c.groups)


def per_activation_grad(h: Tensor, locations: int | None, n_slices: int, seed: int) -> Tensor:
    """The gradient PER adds to ``h`` (lam = 1), through the real hook path (big chunks for the reference)."""
    ident = nn.Identity()
    with PER(ident, 1.0, n_slices, seed=seed, locations=locations, chunk_elements=max(1 << 20, 256 * n_slices)):
        hl = h.clone().requires_grad_()
        ident(hl).backward(torch.zeros_like(h))
    return hl.grad


def _cos(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _rel_mse(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).sum() / b.double().pow(2).sum())


def quality(
    layers: list[Layer], estimators: list[tuple[str, int | None, int]], reps: int, ref_slices: int
) -> dict[str, dict[str, float]]:
    """Median over layers of cos / relative MSE (activation and weight gradient) for every estimator."""
    per_layer: dict[str, dict[str, list[float]]] = {
        lab: {k: [] for k in ("cos_w", "rmse_w", "cos_h", "rmse_h")} for lab, _, _ in estimators
    }
    for i, layer in enumerate(layers):
        ref_h = per_activation_grad(layer.h, None, ref_slices, seed=10_000 + i)
        ref_w = _weight_grad(layer, ref_h)
        for lab, m, s in estimators:
            acc = per_layer[lab]
            for r in range(reps):
                g = per_activation_grad(layer.h, m, s, seed=r)
                w = _weight_grad(layer, g)
                acc["cos_w"].append(_cos(w, ref_w))
                acc["rmse_w"].append(_rel_mse(w, ref_w))
                acc["cos_h"].append(_cos(g, ref_h))
                acc["rmse_h"].append(_rel_mse(g, ref_h))
    return {lab: {k: statistics.median(v) for k, v in acc.items()} for lab, acc in per_layer.items()}


def trained_like_resnet(depth: int = 56, seed: int = 0) -> nn.Module:
    """Fixup ResNet with every conv2 re-initialized like conv1 (so the residual branches are on)."""
    torch.manual_seed(seed)
    model = build_model(f"resnet{depth}")
    with torch.no_grad():
        for block in model.blocks:
            nn.init.kaiming_normal_(block.conv2.weight, mode="fan_out", nonlinearity="relu")
            block.conv2.weight.mul_(len(model.blocks) ** -0.5)
    return model


# --- 3. full training step per estimator ------------------------------------------------------------


def _hooked_step(quick: bool, clone: bool) -> Callable[[], None]:
    """The vanilla step with hooks on every regularized layer that do nothing (or copy the gradient)."""
    step, model, _ = make_step(SHAPES["resnet56"], "vanilla", quick=quick)

    def forward_hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
        if out.requires_grad:
            out.register_hook((lambda g: g.clone()) if clone else (lambda g: g))

    for m in model.pre_activations().values():
        m.register_forward_hook(forward_hook)
    return step


def step_table(quick: bool, estimators: list[tuple[str, int | None, int]], repeats: int) -> dict[str, float]:
    shape = SHAPES["resnet56"]
    fns = {"vanilla": make_step(shape, "vanilla", quick=quick)[0], "bn": make_step(shape, "bn", quick=quick)[0]}
    fns["hooks_noop"], fns["hooks_clone"] = _hooked_step(quick, False), _hooked_step(quick, True)
    for lab, m, s in estimators:
        fns[lab] = make_step(shape, "per", quick=quick, locations=m, n_slices=s)[0]
    t = interleaved(fns, repeats=repeats, warmup=1, quiet_wait=0 if quick else 30)
    ms, ext = 1e3 * t.median("vanilla"), t.external_load()
    progress(f"conv_step: vanilla step {ms:.0f} ms, other processes used {ext:.2f} cores")
    return {name: t.ratio(name, "vanilla") for name in fns}


def run(quick: bool = False, device: str = "cpu") -> list[str]:
    """All three parts; returns the printed result lines."""
    if device != "cpu":
        progress("conv_design runs on the CPU only (it is the design study); skipped for " + device)
        return []
    estimators = QUICK_ESTIMATORS if quick else ESTIMATORS
    lines = []
    progress("conv_design 1/3: per-layer kernel cost vs the conv's own forward+backward")
    lines += kernel_table(quick, repeats=3 if quick else 9)
    progress("conv_design 2/3: full ResNet-56 step per estimator (interleaved with vanilla and BN)")
    ratios = step_table(quick, estimators, repeats=1 if quick else 5)
    step_batch = SHAPES["resnet56"].quick_batch if quick else SHAPES["resnet56"].batch
    for name in ("bn", "hooks_noop", "hooks_clone"):
        lines.append(emit(f"conv_step/{name}", ratios[name], per="vanilla", model="resnet56", batch=step_batch))
    progress("conv_design 3/3: gradient quality against the all-location reference")
    model = trained_like_resnet(20 if quick else 56)
    size = 8 if quick else 32
    x = torch.randn(2 if quick else 128, 3, size, size, generator=torch.Generator().manual_seed(1))
    layers = capture_layers(model, x)
    # every third layer: 19 of the 55 (7, 6 and 6 of the three stages), to fit the time budget
    layers = layers[:1] if quick else layers[::3]
    ref_slices = 256 if quick else 4096
    q = quality(layers, estimators, reps=1 if quick else 3, ref_slices=ref_slices)
    for lab, m, s in estimators:
        qq = q[lab]
        lines.append(
            emit(
                f"conv_step/{lab}",
                ratios[lab],
                per="vanilla",
                locations=m if m is not None else "all",
                slices=s,
                cos_w=qq["cos_w"],
                rmse_w=qq["rmse_w"],
                cos_h=qq["cos_h"],
                rmse_h=qq["rmse_h"],
                ref_slices=ref_slices,
                layers=len(layers),
            )
        )
    return lines


def main() -> None:
    run(standalone_parser(__doc__).parse_args().quick)


if __name__ == "__main__":
    main()
