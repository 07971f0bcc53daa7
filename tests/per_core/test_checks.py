"""The shared argument checks: what each accepts (numpy scalars included) and what it refuses."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from per_core.checks import SEED_LIMIT, check_nonnegative, check_positive_int, check_seed, is_integer


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_integers_of_any_kind_are_integers(n):
    assert is_integer(n)
    if -(2**63) <= n < 2**63:
        assert is_integer(np.int64(n))


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 1.0, np.float64(2.0), "3", None, 1 + 0j])
def test_bools_floats_and_strings_are_not_integers(value):
    assert not is_integer(value)


def test_check_positive_int_returns_a_plain_int_and_names_the_argument():
    assert type(check_positive_int(np.uint8(7), "k")) is int
    for bad in (0, -1, 1.0, True, "2"):
        with pytest.raises(ValueError, match=r"^k must be a positive integer, got "):
            check_positive_int(bad, "k")


def test_check_seed_covers_exactly_zero_to_two_to_the_64():
    assert check_seed(0) == 0 and check_seed(SEED_LIMIT - 1) == 2**64 - 1 and check_seed(np.uint64(5)) == 5
    for bad in (-1, SEED_LIMIT, 2**70, 0.0, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            check_seed(bad)


@given(st.floats(min_value=0.0, allow_infinity=False, allow_nan=False))
def test_check_nonnegative_returns_a_float_of_the_same_value(x):
    assert check_nonnegative(x, "w") == x and type(check_nonnegative(np.float64(x), "w")) is float


@pytest.mark.parametrize("bad", [-1e-300, float("inf"), float("nan"), np.float32("nan"), True, "0.1", None])
def test_check_nonnegative_refuses_what_is_not_a_finite_weight(bad):
    with pytest.raises(ValueError, match=r"^lam must be a finite number >= 0, got "):
        check_nonnegative(bad, "lam")
