"""The Generations that browser sessions keep for their branch panel, within one byte budget for all sessions together.

    handle = KEPT.keep(generation)   # a session keeps this small handle (its gr.State), not the Generation
    handle.generation                # the Generation, or None once it was let go of to stay within the budget

A session's panel reads its last Generation again at every step it shows, so each session keeps one; without a bound
the memory grows with the sessions (up to about 37 MB each at 250 steps x 3 branches x 16 images). The oldest
Generation kept goes first; a Generation shared by equal requests counts once. DIMR_KEPT_MB sets the budget.
"""

import collections
import itertools
import os
import threading
from dataclasses import dataclass

DEFAULT_BUDGET_MB = 1024
EVICTED = ("**This panel's data was let go of to keep the server's memory within its budget (other visitors' runs "
           "came after it).** Run it again to see its branch panel.")


def budget_bytes():
    """DIMR_KEPT_MB in bytes: the memory all sessions' kept Generations may hold together."""
    value = os.environ.get("DIMR_KEPT_MB") or DEFAULT_BUDGET_MB
    try:
        return int(float(value) * 2**20)
    except ValueError:
        raise ValueError(f"DIMR_KEPT_MB={value!r} must be a number of megabytes") from None


def size_of(generation):
    """The bytes a Generation holds: its images and every branch's estimate at every panel step."""
    return generation.images.nbytes + generation.branch_images.nbytes


@dataclass(frozen=True)
class Handle:
    """What a session keeps: the key of its Generation in the process's store (a key only, so that copying a
    session's state copies no images)."""

    key: int

    @property
    def generation(self):
        return kept().get(self.key)


class Kept:
    """Generations by key, oldest first, at most `budget` bytes together (the newest is kept even when larger)."""

    def __init__(self, budget=None):
        self.budget = budget_bytes() if budget is None else budget
        self._lock = threading.Lock()
        self._generations = collections.OrderedDict()  # key -> Generation, oldest first
        self._keys = {}  # id(Generation) -> its key, while it is kept
        self._counter = itertools.count()
        self.bytes = 0

    def keep(self, generation):
        """A Handle of the generation, kept as the newest; older ones go until the rest fit the budget."""
        with self._lock:
            key = self._keys.get(id(generation))
            if key is None:
                key = self._keys[id(generation)] = next(self._counter)
                self.bytes += size_of(generation)
                self._generations[key] = generation
            self._generations.move_to_end(key)
            while self.bytes > self.budget and len(self._generations) > 1:
                _, oldest = self._generations.popitem(last=False)
                del self._keys[id(oldest)]
                self.bytes -= size_of(oldest)
            return Handle(key)

    def get(self, key):
        with self._lock:
            return self._generations.get(key)


KEPT = None
_made = threading.Lock()


def kept():
    """The process's one store, made on first use (its budget read then)."""
    global KEPT
    with _made:
        if KEPT is None:
            KEPT = Kept()
        return KEPT
