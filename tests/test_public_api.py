"""The public names of DESIGN.md exist, are exported, and importing the packages stays headless."""

import subprocess
import sys

import analysis
import per_core

DESIGN_NAMES = {
    per_core: ["per_loss", "per_grad", "PER", "as_samples"],
    analysis: [
        "ActivationRecorder",
        "w1_to_normal",
        "sliced_w1_to_normal",
        "sliced_w1",
        "w1",
        "per_bound",
        "check_bounds",
        "load_run",
    ],
}


def test_every_name_in_all_exists_and_design_names_are_exported():
    for module, names in DESIGN_NAMES.items():
        assert set(names) <= set(module.__all__), module.__name__
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_importing_the_packages_does_not_import_matplotlib_or_pandas():
    code = (
        "import sys, analysis, per_core; print(sorted(m for m in ('matplotlib', 'pandas', 'ot') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
