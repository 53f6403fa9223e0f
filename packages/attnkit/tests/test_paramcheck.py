import math

import pytest

from attnkit.paramcheck import as_bool, check_float, check_int


def test_check_int_returns_the_value_and_names_the_argument() -> None:
    assert check_int("window", 3, 1) == 3
    assert check_int("hops", 4, 0, 4) == 4
    with pytest.raises(TypeError, match=r"window must be an int, got bool True"):
        check_int("window", True, 1)
    with pytest.raises(TypeError, match=r"window must be an int, got float 2.0"):
        check_int("window", 2.0, 1)
    with pytest.raises(ValueError, match=r"window must be >= 1, got 0"):
        check_int("window", 0, 1)
    with pytest.raises(ValueError, match=r"hops must be in \[0, 4\], got 5"):
        check_int("hops", 5, 0, 4)


def test_check_float_bounds_open_and_closed() -> None:
    assert check_float("beta", 1, 0.0, 1.0) == 1
    assert check_float("beta", 0.0, 0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match=r"beta must be in \(0.0, 1.0\], got 0.0"):
        check_float("beta", 0.0, 0.0, 1.0, open_lo=True)
    for bad in (math.nan, math.inf, 1.5, -0.1):
        with pytest.raises(ValueError, match="beta must be in"):
            check_float("beta", bad, 0.0, 1.0)
    with pytest.raises(TypeError, match="beta must be a float, got str"):
        check_float("beta", "0.5", 0.0, 1.0)


@pytest.mark.parametrize(("text", "want"), [("true", True), (" Yes", True), ("1", True), ("off", False), ("0", False)])
def test_as_bool_reads_cli_strings(text: str, want: bool) -> None:
    assert as_bool("full", text) is want
    assert as_bool("full", want) is want


def test_as_bool_refuses_other_values() -> None:
    for bad in (1, None, "maybe"):
        with pytest.raises(TypeError, match="full must be a bool"):
            as_bool("full", bad)


def test_check_queries_are_last_keys_names_the_spec_and_sizes() -> None:
    import torch

    from attnkit.paramcheck import check_queries_are_last_keys

    k = torch.zeros(1, 2, 5, 4)
    check_queries_are_last_keys("band", torch.zeros(1, 4, 5, 4), k)
    check_queries_are_last_keys("band", torch.zeros(1, 4, 2, 4), k)
    check_queries_are_last_keys("band", torch.zeros(4, 9, 4), k)  # other ranks: not this check's
    with pytest.raises(ValueError, match=r"band queries are the last Tq keys: q has Tq=6 tokens but k has only Tk=5"):
        check_queries_are_last_keys("band", torch.zeros(1, 4, 6, 4), k)
