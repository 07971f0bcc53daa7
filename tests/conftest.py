"""Test-session settings: one torch thread per xdist worker (2 workers on 2 cores); figures closed after each test."""

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _close_figures():
    """Tests that draw leave no figure open for the next (matplotlib keeps pyplot figures until closed)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
