"""What the package keeps in memory between calls, in one store: loaded networks and VAEs (dimr.sampling.loading), DiT
pipelines (dimr.demo.dit), model outlines (dimr.demo.catalogue), the ImageNet class names (dimr.sampling.labels), FLOP counts and
a device's matrix-multiply speed (dimr.demo.imagenet_compare).

    network = caches.remembered(("network", directory, device, dtype), lambda: load(...))
    caches.clear()          # forget everything; memory is freed once nothing else holds it

A value is made once per key, by its first caller; callers of other keys never wait for it (a model downloading
for one request does not hold up another request's model).
"""

import threading

_values = {}
_key_locks = {}
_lock = threading.Lock()


def remembered(key, make):
    """The value kept under `key` (hashable), made by make() the first time; concurrent callers wait for that one."""
    with _lock:
        if key in _values:
            return _values[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            if key in _values:
                return _values[key]
        value = make()
        with _lock:
            _values[key] = value
        return value


def clear():
    """Forget every remembered value."""
    with _lock:
        _values.clear()
        _key_locks.clear()
