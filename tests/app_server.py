"""`python app.py` as a real server on a free loopback port, for the API and browser tests and
benchmarks/load_app.py."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(tmp_dir, extra_env=None, timeout=90):
    """Start `python app.py` on a free loopback port, offline, with its own caches; yield its URL and process."""
    port = free_port()
    tmp_dir = Path(tmp_dir)
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_dir / "hf-home"), "DIMR_CACHE": str(tmp_dir / "dimr-cache"),
           "GRADIO_TEMP_DIR": str(tmp_dir / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False", **(extra_env or {})}
    log_path = tmp_dir / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer on {url} within {timeout} s:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
