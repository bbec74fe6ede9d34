"""Checks of request parameters, the same whichever edge passes them: an API query or body, a
page's form, a command's options.

A parameter object of the domain (e.g. `annotator.reports.ReportRequest`,
`datasets.splits.SplitParameters`) reads its values through these, so each parameter has one
set of bounds and one message, and the message names the parameter (a command's user sees no
field name beside it).
"""

from __future__ import annotations

import contextlib

from core.errors import DomainError

SEED_MAX = 2**32 - 1  # NumPy's and scikit-learn's seeds are 32-bit


def whole_number(value, name: str, low: int, high: int) -> int:
    """`value` (an int, or the text of one: a query string's "5") as an int from `low` to
    `high`, or a DomainError that names `name` and the bounds."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = value[:40] if isinstance(value, str) else value
        raise DomainError(
            f"{name} must be a whole number from {low} to {high}, not {shown!r}.", name
        )
    return value


def seed(value, name: str = "seed") -> int:
    """A random seed, the same bounds everywhere: 0 to 2**32 - 1."""
    return whole_number(value, name, 0, SEED_MAX)


def share(value, name: str) -> float:
    """A share of a whole (an int, float, or the text of one) greater than 0 and at most 1,
    or a DomainError that names `name`."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.strip())
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value
        or not 0 < value <= 1
    ):
        shown = value[:40] if isinstance(value, str) else value
        raise DomainError(f"{name} must be a number above 0 and at most 1, not {shown!r}.", name)
    return float(value)
