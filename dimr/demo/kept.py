"""The Generations that browser sessions keep for their branch panel, within one byte budget for all sessions together.

    handle = kept().keep(generation)   # a session keeps this small handle (its gr.State), not the Generation
    handle.generation                  # the Generation, or None once it was let go of to stay within the budget

A session's panel reads its last Generation again at every step it shows, so each session keeps one; without a bound
the memory grows with the sessions (up to about 37 MB each at 250 steps x 3 branches x 16 images). The oldest
Generation kept goes first; a Generation shared by equal requests counts once; one no session holds any more (its
next run replaced it, or the session expired) goes at once. DIMR_KEPT_MB sets the budget.
"""

import collections
import itertools
import os
import threading

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


class Handle:
    """What a session keeps: the key of its Generation in the process's store. When the session lets go of it (a new
    run replaces it, or the session expires), so does the store, once no other session's handle holds it."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    @property
    def generation(self):
        return kept().get(self.key)

    def __eq__(self, other):
        return isinstance(other, Handle) and other.key == self.key

    __hash__ = None

    def __copy__(self):
        return self  # a copy of a session's state shares the handle: it stays one reference

    def __deepcopy__(self, memo):
        return self

    def __del__(self):
        if KEPT is not None:
            KEPT.release(self.key)


class Kept:
    """Generations by key, oldest first, at most `budget` bytes together (the newest is kept even when larger)."""

    def __init__(self, budget=None):
        self.budget = budget_bytes() if budget is None else budget
        self._lock = threading.RLock()  # a handle let go of inside keep() releases its key on the same thread
        self._handles = collections.Counter()  # key -> the handles that sessions hold
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
            self._handles[key] += 1
            while self.bytes > self.budget and len(self._generations) > 1:
                self._drop(next(iter(self._generations)))
            return Handle(key)

    def get(self, key):
        with self._lock:
            return self._generations.get(key)

    def release(self, key):
        """A handle of `key` is gone: the Generation goes with the last one."""
        with self._lock:
            self._handles[key] -= 1
            if self._handles[key] <= 0:
                del self._handles[key]
                if key in self._generations:
                    self._drop(key)

    def _drop(self, key):
        generation = self._generations.pop(key)
        del self._keys[id(generation)]
        self.bytes -= size_of(generation)


KEPT = None
_made = threading.Lock()


def kept():
    """The process's one store, made on first use (its budget read then)."""
    global KEPT
    with _made:
        if KEPT is None:
            KEPT = Kept()
        return KEPT


def held(state):
    """The Generation a session's state holds (a Handle of `keep`, or None): None before a run or once let go of."""
    return None if state is None else state.generation
