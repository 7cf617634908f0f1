"""Why each browser session's last request was refused, kept for the status line that a failure event fills, and
said in the page's words.

API clients never trigger that event, so only the latest sessions are kept. Handler threads record and read at once.

    page_message(error, {"num_inference_steps": "Steps"})   # 'Steps must be 1 to 250; you typed 0.'
"""

import collections
import threading

from dimr.checks import OutOfRange


def page_message(error, labels):
    """A refused request as the page says it: a value out of range named by its control's label (`labels`: argument
    name -> label), with what is allowed and what was typed; any other refusal in its own words. The API keeps the
    error's own message, which names the argument."""
    label = labels.get(getattr(error, "name", None)) if isinstance(error, OutOfRange) else None
    if label is None:
        return str(error)
    kind = "a whole number from " if error.whole and isinstance(error.value, float) else ""
    typed = f"{error.value:g}" if isinstance(error.value, (int, float)) else repr(error.value)
    return f"{label} must be {kind}{error.low:g} to {error.high:g}; you typed {typed}."


class Refusals:
    """Session id -> the error that refused its last request, for the latest `capacity` sessions."""

    def __init__(self, capacity=256):
        self.capacity = capacity
        self._errors = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, session, error):
        with self._lock:
            self._errors[session] = error
            self._errors.move_to_end(session)
            while len(self._errors) > self.capacity:
                self._errors.popitem(last=False)

    def status_line(self, session, labels):
        """The status line after the session's failed run, in the page's words (`page_message`); the refusal is
        forgotten once read. A run that failed without a refusal failed on the server."""
        error = self.pop(session)
        return f"**Could not run:** {page_message(error, labels) if error else 'the server failed; please try again.'}"

    def pop(self, session, default=None):
        """The session's last refusal (forgotten once read), or `default`."""
        with self._lock:
            return self._errors.pop(session, default)
