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


class OutOfRange(ValueError):
    """A value that is not a number of the allowed kind in low..high; its message names the caller's argument, and
    `name`, `value`, `low`, `high` and `whole` (integers only) let a page say the same in its own words."""

    def __init__(self, message, name, value, low, high, whole):
        super().__init__(message)
        self.name, self.value, self.low, self.high, self.whole = name, value, low, high, whole


def check_int(name, value, low, high):
    """`value` as an int when it is an integer in low..high; else a ValueError naming it and what is allowed.

    Integers only: a bool, a float (even 2.0) or a string of digits is refused rather than silently converted."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OutOfRange(f"{name} must be an integer, got {shown(value)}", name, value, low, high, whole=True)
    if not low <= value <= high:
        raise OutOfRange(f"{name}={value} is out of range: use {low}..{high}", name, value, low, high, whole=True)
    return int(value)


def check_number(name, value, low, high):
    """`value` as a float when it is a finite number in low..high; else a ValueError naming it and what is allowed.

    A bool or a string of digits is refused rather than silently converted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise OutOfRange(f"{name} must be a finite number, got {shown(value)}", name, value, low, high, whole=False)
    if not low <= value <= high:
        raise OutOfRange(f"{name}={value:g} is out of range: use {low:g}..{high:g}", name, value, low, high,
                         whole=False)
    return float(value)
