"""Why a request was not run, and each browser session's last such reason, kept for the status line that a failure
event fills.

A `Refused` request is the visitor's to change (a value out of range, a model this server cannot load, more time than
it allows); any other failure is the server's: logged with its traceback, and the visitor told to retry.
API clients never trigger the failure event, so only the latest sessions are kept. Handler threads record and read at
once.
"""

import collections
import functools
import logging
import threading

log = logging.getLogger(__name__)
SERVER_FAILED = ("The server failed while running this request (the reason is in its log, for its operator). Your "
                 "settings are kept: run it again.")


class Refused(ValueError):
    """A request this server will not run, with the message for the visitor: what is wrong and what is allowed."""


def refusing(check):
    """A request's check whose ValueErrors (the visitor's values) are raised again as Refused."""
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
    """(title, message) that the visitor is told about an exception, logged: a refusal as one line, anything else as
    an error with its traceback."""
    if isinstance(error, Refused):
        log.info("refused: %s", " ".join(str(error).split()))
        return "Cannot run", str(error)
    log.error("the server failed on a request", exc_info=error)
    return "The server failed", SERVER_FAILED


class Refusals:
    """Session id -> the message of its last refused request, for the latest `capacity` sessions."""

    def __init__(self, capacity=256):
        self.capacity = capacity
        self._messages = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, session, message):
        """Keep a session's refusal; none for a caller without a session (None)."""
        if not session:
            return
        with self._lock:
            self._messages[session] = message
            self._messages.move_to_end(session)
            while len(self._messages) > self.capacity:
                self._messages.popitem(last=False)

    def pop(self, session, default=None):
        """The session's last refusal (forgotten once read), or `default`."""
        with self._lock:
            return self._messages.pop(session, default)
