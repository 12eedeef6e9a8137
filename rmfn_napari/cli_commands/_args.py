"""Argument types shared by the sub-commands."""

from __future__ import annotations

import argparse


def positive_ints(text: str) -> tuple[int, ...]:
    """Parse ``"500,500,1000"`` into positive integers (argparse type)."""
    try:
        values = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
