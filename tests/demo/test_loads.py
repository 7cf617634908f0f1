"""Models load off the sampling thread (dimr.demo.loads, dimr.demo.serving): the visitor who asked sees the load in
progress, requests for models already loaded keep being served, and visitors asking for one model share one load.
The loader here blocks until the test releases it."""

import threading

import pytest

from dimr.demo import serving
from dimr.demo.loads import Loads
from dimr.demo.request import Request

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny
BLOCKED = "tiny-baseline"


def test_asking_for_a_key_under_way_shares_its_load_and_a_failed_load_is_retried():
    release, calls = threading.Event(), []

    def load(key):
        calls.append(key)
        release.wait(60)
        if len(calls) == 1:
            raise OSError("the hub went away")

    loads = Loads(load)
    first, second = loads.start("m"), loads.start("m")
    assert first is second and not first.finished.is_set()
    release.set()
    for current in (first, second):
        with pytest.raises(OSError, match="the hub went away"):
            current.result()
    again = loads.start("m")  # a failed load is not kept: the next visitor tries again
    again.result()
    assert calls == ["m", "m"] and loads.start("m") is None


@pytest.fixture
def blocked_load(monkeypatch):
    """serving with fresh loads, where loading BLOCKED waits for the returned event; the calls of prepare by model."""
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    monkeypatch.setattr(serving, "_loads", None)
    release, calls, prepare = threading.Event(), [], serving.prepare

    def blocking(model_name):
        calls.append(model_name)
        if model_name == BLOCKED:
            assert release.wait(120)
        prepare(model_name)

    monkeypatch.setattr(serving, "prepare", blocking)
    yield release, calls
    release.set()
    current = serving.loads().start(serving.load_key(BLOCKED))  # over before the process ends: torch aborts a
    if current is not None:                                       # daemon thread still inside it at exit
        current.finished.wait(120)


def test_a_loading_model_holds_up_no_other_models_request_and_two_visitors_share_its_load(blocked_load):
    release, calls = blocked_load
    serving.loads().start(serving.load_key("tiny-dimr")).result()  # a model already loaded, as after start-up
    updates = {name: [] for name in ("first", "second")}
    loading = {name: threading.Event() for name in updates}

    def visit(name):
        for update in serving.stream(Request.check(model=BLOCKED, classes=["ring"], num_inference_steps=2)):
            updates[name].append(update)
            loading[name].set()

    visitors = [threading.Thread(target=visit, args=(name,)) for name in updates]
    for visitor in visitors:
        visitor.start()
    assert all(event.wait(60) for event in loading.values())
    # While BLOCKED loads, a request for the loaded model is sampled and answered.
    served = list(serving.stream(Request.check(model="tiny-dimr", classes=["star"], num_inference_steps=2)))[-1]
    assert served.captions == ["star"]
    assert all(not isinstance(u, serving.Progress) for name in updates for u in updates[name])
    release.set()
    for visitor in visitors:
        visitor.join(120)
    assert calls.count(BLOCKED) == 1, "one load for both visitors"
    for name in updates:
        first, last = updates[name][0], updates[name][-1]
        assert isinstance(first, serving.Loading) and first.model == BLOCKED
        assert first.describe().startswith(f"Loading {BLOCKED} (the first use of a released model downloads it): ")
        assert last.captions == ["ring"]


def test_a_visitor_who_leaves_while_the_model_loads_stops_waiting(blocked_load):
    stop = threading.Event()
    updates = serving.stream(Request.check(model=BLOCKED, classes=["ring"], num_inference_steps=2), stop=stop)
    assert isinstance(next(updates), serving.Loading)
    stop.set()
    with pytest.raises(RuntimeError, match="stopped before the last step"):
        list(updates)
