"""per_core.allocator: the heap keeps what a step frees, large blocks still go back, the user's own settings win."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from per_core import allocator

ROOT = Path(__file__).resolve().parents[2]
MALLOC_ENV = ("PER_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")

# Training steps of a small conv net with BN (4 MiB activations). With glibc's adaptive defaults
# 2,600-10,800 pages a step went back to the kernel and were faulted in again here (with only the mmap
# threshold fixed ~9,000, with only the trim threshold ~76,000); tuned, 0-410 (the heap settling).
STEPS = """
import resource, sys, torch
from torch import nn
from per_core.allocator import tune_malloc
said = tune_malloc() if sys.argv[1] == "tune" else "untouched"
torch.manual_seed(0)
net = nn.Sequential(*[m for _ in range(6) for m in (nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())])
x = torch.randn(64, 16, 32, 32)

def step():
    net(x).square().mean().backward()

for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(said.split()[0], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""

# A block above MMAP_THRESHOLD (a loaded dataset) freed under a live small one: it must go back to the
# kernel (with no separate mappings at all it stayed resident: 2.9 GB after a CIFAR-sized load of 0.74 GB).
LARGE = """
import torch
from per_core.allocator import tune_malloc

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmRSS"))

said = tune_malloc()
before = rss_mib()
big = torch.empty(64 << 20).fill_(1.0)  # 256 MiB
small = torch.ones(1000)
held = rss_mib()
del big
print(said, held - before, rss_mib() - before)
"""


def child(code: str, *args: str, **env: str) -> list[str]:
    """Run ``code`` in a fresh process (malloc settings are per process), with no malloc settings but ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in MALLOC_ENV}
    full.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, check=True)
    return out.stdout.split()


glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")


@glibc
def test_tuned_heap_keeps_what_a_step_frees():
    # glibc's defaults are not asserted (2,640 on a loaded machine): the tuned run fails as it should when
    # either threshold, or both, are left unset (9,000 / 76,000 / 2,600-10,800 faults)
    said, faults = child(STEPS, "tune")
    assert said == "tuned" and float(faults) < 1000


@glibc
def test_a_freed_block_above_the_threshold_goes_back_to_the_kernel():
    said, held, after = child(LARGE)
    assert said == "tuned" and int(held) >= 250 and int(after) < 20


@glibc
def test_the_users_own_setting_is_left_alone():
    # every block mapped on its own (the user's choice): each step faults its pages in, tune_malloc keeps out
    said, faults = child(STEPS, "tune", MALLOC_MMAP_THRESHOLD_="0")
    assert said == "default" and float(faults) > 3000


@pytest.fixture
def clean_env(monkeypatch):
    """No malloc setting in the environment, and a process that has not tuned malloc yet."""
    for k in list(os.environ):
        if k.startswith("MALLOC_") or k in MALLOC_ENV:
            monkeypatch.delenv(k)
    monkeypatch.setattr(allocator, "_setting", "default")
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"PER_MALLOC": "default"}, "PER_MALLOC=default"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "GLIBC_TUNABLES glibc.malloc.mmap_threshold"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
    ],
)
def test_why_malloc_was_left_alone_is_said(clean_env, env, reason):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert allocator.tune_malloc() == allocator.malloc_setting() == f"default ({reason})"


@glibc
def test_unrelated_malloc_settings_do_not_stop_the_tuning(clean_env):
    clean_env.setenv("MALLOC_ARENA_MAX", "2")  # containers set it; it says nothing about the thresholds
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    assert allocator.tune_malloc() == allocator.malloc_setting() == "tuned"


def test_an_unknown_per_malloc_is_an_error(clean_env):
    clean_env.setenv("PER_MALLOC", "off")
    with pytest.raises(ValueError, match="PER_MALLOC must be 'default'.*or 'tuned', got 'off'"):
        allocator.tune_malloc()
