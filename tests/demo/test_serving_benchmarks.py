"""benchmarks/demo_requests.py and benchmarks/load_app.py run end to end on CPU and report what they promise."""

import json


def test_demo_requests_writes_one_row_per_request(tmp_path, run_script):
    out = tmp_path / "rows.json"
    stdout = run_script("benchmarks/demo_requests.py", "--images", "2", "1", "2", "--steps", "2", "--out", str(out))
    rows = json.loads(out.read_text())
    assert [(r["images"], r["first"]) for r in rows] == [(2, True), (1, True), (2, False)]
    for row in rows:
        assert row["model"] == "tiny-latent (random weights)" and row["steps"] == 2 and row["device"] == "cpu"
        assert row["wall_s"] > 0 and row["peak_allocated_gib"] is None and row["peak_rss_gib"] > 0
    assert str(tmp_path) not in json.dumps(rows) and "| tiny-latent (random weights) | 2 | 2 |" in stdout


def test_load_app_prints_the_floor_both_bursts_their_ratios_and_the_servers_memory(run_script):
    stdout = run_script("benchmarks/load_app.py", "--concurrency", "3", "--requests", "3", "--steps", "2",
                        "--classes", "ring", "--class-mix")
    request = json.loads(stdout.split("each request: ", 1)[1].splitlines()[0])
    assert request["classes"] == ["ring"] and request["num_inference_steps"] == 2 and request["model"] == "tiny-dimr"
    assert "floor: 3 requests (seeds 0..2) sampled back to back in this process: " in stdout
    assert "burst of 3 requests with seeds 0..2, each its own classes: all answered; p50 " in stdout
    assert "p95 / floor " in stdout
    assert "burst of 3 equal requests: all answered; " in stdout and "p95 / one alone " in stdout
    assert "3 more requests (3 at a time, new seeds)" in stdout and "server RSS " in stdout
    table = stdout[stdout.index("| measured | result | target |"):]
    assert "**p95 = " in table and "<= 1.3 x floor" in table and "<= 3.0 x one alone" in table


def test_session_memory_prints_the_peak_against_the_budget(run_script):
    # The memory's judgement is the benchmark's to print, not this test's: the allocator moves it by tens of MiB.
    stdout = run_script("benchmarks/session_memory.py", "--budget-mb", "0.5", "--sessions", "3", "--steps", "4",
                        "--slack-mb", "100000")
    assert "3 sessions would keep 2 MB without the budget (3.7 x the budget of 0.5 MB)" in stdout
    assert "the server's own size (after a first request of this size" in stdout
    table = stdout[stdout.index("| budget |"):]
    assert "| 0.5 MB | 3 x 0.6 MB | 2 MB |" in table and "peak while sampling" in table
