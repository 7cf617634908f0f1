"""Why a request was not run, and each browser session's last such reason, kept for the status line that a failure
event fills and said in the page's words.

A `Refused` request is the visitor's to change (a value out of range, a model this server cannot load, more time than
it allows); any other failure is the server's: logged with its traceback, and the visitor told to retry. API clients
never trigger the failure event, so only the latest sessions are kept. Handler threads record and read at once.

    page_message(error, {"num_inference_steps": "Steps"})   # 'Steps must be 1 to 250; you typed 0.'
"""

import collections
import functools
import logging
import threading

from dimr.checks import OutOfRange

log = logging.getLogger(__name__)
SERVER_FAILED = ("The server failed while running this request (the reason is in its log, for its operator). Your "
                 "settings are kept: run it again.")


class Refused(ValueError):
    """A request this server will not run, with the message for the visitor: what is wrong and what is allowed."""


def refusing(check):
    """A request's check whose ValueErrors (the visitor's values) are raised again as Refused (the original kept as
    its cause, for `page_message`)."""
    @functools.wraps(check)
    def checked(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except Refused:
            raise
        except ValueError as err:
            raise Refused(str(err)) from err

    return checked


def explained(error):
    """(title, message) that the visitor is told about an exception, logged: a refusal as one line (with what the
    operator must do, where the error says), anything else as an error with its traceback."""
    if isinstance(error, Refused):
        log.info("refused: %s", " ".join(f"{error} {getattr(error, 'operator', '')}".split()))
        return "Cannot run", str(error)
    log.error("the server failed on a request", exc_info=error)
    return "The server failed", SERVER_FAILED


def page_message(error, labels):
    """A refused request as the page says it: a value out of range named by its control's label (`labels`: argument
    name -> label), with what is allowed and what was typed; any other refusal in its own words. The API keeps the
    error's own message, which names the argument."""
    value = error if isinstance(error, OutOfRange) else error.__cause__
    label = labels.get(value.name) if isinstance(value, OutOfRange) else None
    if label is None:
        return str(error)
    kind = "a whole number from " if value.whole and isinstance(value.value, float) else ""
    typed = f"{value.value:g}" if isinstance(value.value, (int, float)) else repr(value.value)
    return f"{label} must be {kind}{value.low:g} to {value.high:g}; you typed {typed}."


class Refusals:
    """Session id -> its last failed request's error, for the latest `capacity` sessions."""

    def __init__(self, capacity=256):
        self.capacity = capacity
        self._errors = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, session, error):
        """Keep a session's failure; none for a caller without a session (None)."""
        if not session:
            return
        with self._lock:
            self._errors[session] = error
            self._errors.move_to_end(session)
            while len(self._errors) > self.capacity:
                self._errors.popitem(last=False)

    def status_line(self, session, labels):
        """The status line after the session's failed run, in the page's words (`page_message`) for a refusal; the
        failure is forgotten once read."""
        error = self.pop(session)
        if not isinstance(error, Refused):
            return f"**Could not run:** {SERVER_FAILED}"
        return f"**Could not run:** {page_message(error, labels)}"

    def pop(self, session, default=None):
        """The session's last failure (forgotten once read), or `default`."""
        with self._lock:
            return self._errors.pop(session, default)
