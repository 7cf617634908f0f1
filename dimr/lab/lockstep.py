"""Lockstep: several training processes kept at the same step and stopped at the same step."""

import json
import os
import time
from pathlib import Path


class Lockstep:
    """Keeps processes that train side by side at the same step and stops them at the same step.

    Every `every` steps each process writes its step to `<dir>/<name>.json` and waits while it is more than
    `every` steps ahead of the slowest live peer. The first process whose time is up writes `stop.json`
    with a step a little beyond every peer's, and every process stops exactly there. A peer that has
    finished, or not reported for `stale_seconds` (crashed), no longer holds the others back.

    A stop belongs to one session: the processes of a session all stop at its stop step and a later session resumes
    from there, so a `stop.json` at or before the step a process starts from (`start_step`) was left by an earlier
    session, and is removed rather than ending this one at once.
    """

    def __init__(self, directory, name, every=20, stale_seconds=120, start_step=0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.every, self.stale_seconds = name, every, stale_seconds
        earlier = self.stop_step()
        if earlier is not None and earlier <= start_step:
            # A peer of this session may have removed it first.
            (self.dir / "stop.json").unlink(missing_ok=True)

    def _write(self, path, data):
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def _read(self, path):
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _live_peer_steps(self):
        steps = []
        for path in self.dir.glob("*.json"):
            if path.stem in (self.name, "stop"):
                continue
            info = self._read(path)
            if info and not info["done"] and time.time() - info["time"] < self.stale_seconds:
                steps.append(info["step"])
        return steps

    def stop_step(self):
        info = self._read(self.dir / "stop.json")
        return None if info is None else info["step"]

    def sync(self, step, time_is_up):
        """Report `step`; returns the agreed stop step once there is one, else None."""
        self._write(self.dir / f"{self.name}.json", {"step": step, "done": False, "time": time.time()})
        if time_is_up and self.stop_step() is None:
            furthest = max([step, *self._live_peer_steps()])
            stop = (furthest // self.every + 2) * self.every
            try:
                # O_EXCL: the first process to propose a stop step wins.
                fd = os.open(self.dir / "stop.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                with os.fdopen(fd, "w") as f:
                    json.dump({"step": stop, "by": self.name}, f)
            except FileExistsError:
                pass
        while True:
            stop = self.stop_step()
            peers = self._live_peer_steps()
            if (stop is not None and step >= stop) or not peers or step <= min(peers) + self.every:
                return stop
            time.sleep(0.01)
            self._write(self.dir / f"{self.name}.json", {"step": step, "done": False, "time": time.time()})

    def finish(self, step):
        self._write(self.dir / f"{self.name}.json", {"step": step, "done": True, "time": time.time()})
