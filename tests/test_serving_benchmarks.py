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


def test_load_app_prints_its_request_latencies_and_throughput(run_script):
    stdout = run_script("benchmarks/load_app.py", "--concurrency", "3", "--requests", "0", "--steps", "2",
                        "--classes", "ring", "--vary-seed")
    request = json.loads(stdout.split("each request: ", 1)[1].splitlines()[0])
    assert request["classes"] == ["ring"] and request["num_inference_steps"] == 2 and request["model"] == "tiny-dimr"
    assert "burst of 3 concurrent requests (seeds 0..2): all succeeded" in stdout and "p95" in stdout
    assert "images/s" in stdout
