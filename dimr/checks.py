"""Checks of a caller's values shared by the library and the demo, so that one kind of mistake gets one message."""

import math

import numpy as np

SHOWN_CHARACTERS = 60  # of a refused value, in its message and the log: a value can be megabytes long


def shown(value):
    """repr(value), cut to SHOWN_CHARACTERS with its length when longer: what a message echoes of a refused value."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}… ({len(text):,} characters)"


def check_int(name, value, low, high):
    """`value` as an int when it is an integer in low..high; else a ValueError naming it and what is allowed.

    Integers only: a bool, a float (even 2.0) or a string of digits is refused rather than silently converted."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range: use {low}..{high}")
    return int(value)


def check_number(name, value, low, high):
    """`value` as a float when it is a finite number in low..high; else a ValueError naming it and what is allowed.

    A bool or a string of digits is refused rather than silently converted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value:g} is out of range: use {low:g}..{high:g}")
    return float(value)
