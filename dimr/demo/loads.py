"""Models load on threads of their own, never on the sampling thread: a download of gigabytes for one visitor does not
hold up the requests for models already loaded, and visitors who ask for a model while it loads share its load.

    loads = Loads(load=lambda key: ...)      # load(key) does the work (its value is kept in dimr.sampling.caches)
    current = loads.start(key)               # None when `key` has loaded; else the Load under way, started if need be
    while not current.finished.wait(0.4):
        print(f"loading for {current.seconds():.0f} s")
    current.result()                         # raises the load's error (every waiter gets it; the next start retries)
"""

import threading
import time


class Load:
    """One load under way: when it began, whether it is over, and its error."""

    def __init__(self, key):
        self.key = key
        self.began = time.monotonic()
        self.finished = threading.Event()
        self._error = None

    def seconds(self):
        """Seconds since the load began."""
        return time.monotonic() - self.began

    @property
    def failed(self):
        return self._error is not None

    def result(self):
        """Wait for the load; raise its error, if it failed."""
        self.finished.wait()
        if self._error is not None:
            raise self._error


class Loads:
    """Loads by key, each on a thread of its own, one at a time per key (module docstring)."""

    def __init__(self, load):
        self._load = load
        self._lock = threading.Lock()
        self._running = {}  # key -> its Load under way
        self._loaded = set()

    def start(self, key):
        """None when `key` has loaded; else its Load under way (started now when none is)."""
        with self._lock:
            if key in self._loaded:
                return None
            current = self._running.get(key)
            if current is None:
                current = self._running[key] = Load(key)
                threading.Thread(target=self._run, args=(current,), name="dimr-load", daemon=True).start()
            return current

    def forget(self):
        """Load every key again when next asked for (after dimr.sampling.caches.clear())."""
        with self._lock:
            self._loaded.clear()

    def _run(self, current):
        try:
            self._load(current.key)
        except Exception as err:  # noqa: BLE001 - handed to every waiter, who re-raises it
            current._error = err
        with self._lock:
            del self._running[current.key]
            if current._error is None:
                self._loaded.add(current.key)
        current.finished.set()
