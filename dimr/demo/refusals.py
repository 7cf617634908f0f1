"""Why each browser session's last request was refused, kept for the status line that a failure event fills.

API clients never trigger that event, so only the latest sessions are kept. Handler threads record and read at once.
"""

import collections
import threading


class Refusals:
    """Session id -> the message of its last refused request, for the latest `capacity` sessions."""

    def __init__(self, capacity=256):
        self.capacity = capacity
        self._messages = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, session, message):
        with self._lock:
            self._messages[session] = message
            self._messages.move_to_end(session)
            while len(self._messages) > self.capacity:
                self._messages.popitem(last=False)

    def pop(self, session, default=None):
        """The session's last refusal (forgotten once read), or `default`."""
        with self._lock:
            return self._messages.pop(session, default)
