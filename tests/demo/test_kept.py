"""The Generations sessions keep for their branch panels stay within one byte budget (dimr.demo.kept): oldest let go of
first, one shared by equal requests counted once, and a panel whose data was let go of says to run it again."""

import numpy as np
import pytest

from dimr.demo import kept as kept_module
from dimr.demo.kept import EVICTED, Kept, size_of
from dimr.demo.panel import Generation

MB = 2**20


def generation(megabytes):
    return Generation(request=None, captions=["ring"], images=np.zeros((1, 32, 32, 3), np.uint8), branch_names=["b"],
                      panel_steps=[1], branch_images=np.zeros(megabytes * MB - 32 * 32 * 3, np.uint8), seconds=0.0)


@pytest.fixture
def store(monkeypatch):
    """The process's store, with a budget of 3 MB."""
    monkeypatch.setattr(kept_module, "KEPT", Kept(budget=3 * MB))
    return kept_module.kept()


def test_the_oldest_generations_go_first_to_stay_within_the_budget(store):
    first, second, third = generation(1), generation(1), generation(2)
    handles = [store.keep(g) for g in (first, second, third)]
    assert [h.generation for h in handles] == [None, second, third]
    assert store.bytes == size_of(second) + size_of(third) == 3 * MB


def test_a_generation_shared_by_equal_requests_counts_once_and_stays_the_newest(store):
    shared, other = generation(1), generation(1)
    handles = [store.keep(shared), store.keep(other), store.keep(shared)]  # equal requests of one shared run
    assert store.bytes == 2 * MB and handles[0] == handles[2]
    store.keep(generation(2))
    assert handles[0].generation is shared and handles[1].generation is None, "the one kept again was the newest"


def test_a_generation_larger_than_the_budget_is_kept_alone(store):
    large = store.keep(generation(5))
    assert large.generation is not None and store.bytes == 5 * MB
    store.keep(generation(1))
    assert large.generation is None


def test_a_panel_whose_data_was_let_go_of_says_to_run_it_again(store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import app

    handle = store.keep(generation(3))
    store.keep(generation(3))
    assert app.show_step(handle, 1, "estimates")[1] == EVICTED
    assert app.fit_panel(handle, "estimates")[2] == EVICTED
    assert "Run it again" in EVICTED


def test_the_budget_is_the_operators(monkeypatch):
    monkeypatch.setenv("DIMR_KEPT_MB", "64")
    assert Kept().budget == 64 * MB
    monkeypatch.setenv("DIMR_KEPT_MB", "lots")
    with pytest.raises(ValueError, match="DIMR_KEPT_MB='lots' must be a number of megabytes"):
        Kept()


def test_a_generation_goes_when_no_session_holds_it_any_more(store):
    """An API client is one session that runs request after request: its earlier Generations must not pile up until
    the budget is full."""
    import copy

    first = store.keep(generation(1))
    shared = [store.keep(generation(1))]
    shared.append(store.keep(shared[0].generation))  # an equal request of the same run, in another session
    assert copy.deepcopy(first) is first, "a copy of a session's state shares its handle"
    del first  # the session's next run replaced it
    assert store.bytes == 1 * MB
    shared.pop()
    assert store.bytes == 1 * MB and shared[0].generation is not None, "the other session still holds it"
    shared.pop()
    assert store.bytes == 0
