"""Models: the parameter counts their files state, and the pre-activation contract."""

import pytest
import torch

from per_core.models import MODELS, build_model


@pytest.mark.parametrize(("norm", "count"), [("none", 46_890), ("bn", 47_082)])
def test_small_cnn_parameter_counts_match_its_docstring(norm, count):
    model = build_model("small_cnn", norm=norm)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_lists_its_pre_activations_in_depth_order(name):
    model = build_model(name)
    pre = model.pre_activations()
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.append(k)) for k, m in pre.items()]
    model(torch.randn(2, 1, 8, 8))
    for h in hooks:
        h.remove()
    assert seen == list(pre)


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*small_cnn"):
        build_model("resnet9000")
