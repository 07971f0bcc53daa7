"""per_core.allocator: the heap keeps what a step frees, and the user's own malloc settings are respected."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from per_core import allocator

ROOT = Path(__file__).resolve().parents[2]

# A step's activations: 8 MiB tensors written and freed, three at a time (24 MiB, 6144 pages). With
# glibc's adaptive defaults some of them are mmapped and unmapped again, or trimmed, depending on the
# sizes that came before (run to run, 0 to 6,000 page faults per step were seen here): not a steady
# number to test. Tuned, every step reuses the heap: no page faults, in each of three processes (with
# malloc left alone one process in four showed none here: all three, about once in 60).
CHURN = """
import resource, sys, torch
from per_core.allocator import tune_malloc
said = tune_malloc() if sys.argv[1] == "tune" else "untouched"

def step():
    xs = [torch.empty(2 << 20).fill_(1.0) for _ in range(3)]
    del xs

for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(said.split()[0], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


def churn(mode: str, **env: str) -> tuple[str, float]:
    """In a fresh process (malloc settings are per process): what tune_malloc said, page faults per step."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "PER_MALLOC"}
    full.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, env=full, check=True)
    said, faults = out.stdout.split()
    return said, float(faults)


glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")


@glibc
def test_tuned_heap_keeps_what_a_step_frees():
    assert [churn("tune") for _ in range(3)] == [("tuned", 0.0)] * 3


@glibc
def test_the_users_own_setting_is_left_alone():
    # every block mmapped (the user's choice): each step faults all its pages in, tune_malloc changes nothing
    said, faults = churn("tune", MALLOC_MMAP_THRESHOLD_="0")
    assert said == "default" and faults >= 6144  # every page of every block
    said, faults = churn("tune", PER_MALLOC="default", MALLOC_MMAP_THRESHOLD_="0")
    assert said == "default" and faults >= 6144


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"PER_MALLOC": "default"}, "PER_MALLOC=default"),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
    ],
)
def test_why_malloc_was_left_alone_is_said(monkeypatch, env, reason):
    monkeypatch.setattr(allocator, "_setting", "default")  # as in a process that has not tuned it yet
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert allocator.tune_malloc() == allocator.malloc_setting() == f"default ({reason})"


def test_tuning_twice_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_setting", "tuned")
    monkeypatch.setenv("PER_MALLOC", "default")  # read only before the first tuning
    assert allocator.tune_malloc() == allocator.malloc_setting() == "tuned"
