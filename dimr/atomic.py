"""Writing a file or a directory whole or not at all: it is written beside its place under a fresh .partial name,
then renamed into place, so that a reader, a concurrent writer or a run killed half-way never sees half of it.

    with replaced_atomically(out_dir) as partial:
        model.save_pretrained(partial)          # a directory (or a file) at `partial`; out_dir is replaced at the end
    newest_complete(out_dir, version)           # after a kill: the newest whole one back at out_dir

A directory cannot be renamed over a full one, so replacing one takes two renames: the old one steps aside (to
.old), then the new one comes in. A process killed between them leaves no `out_dir`, only the .old and .partial
beside it; `newest_complete` finds them.
"""

import contextlib
import glob
import os
import shutil
import uuid
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a path beside `path`, unique to this call, for the block to write a file or a directory at. When the
    block ends without an error that takes `path`'s place (replacing what was there); otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    # Past here the partial is whole: an interrupted swap leaves it for `newest_complete`, never removes it.
    if partial.is_dir() and path.exists():
        _swap_in(partial, path)
    else:
        os.replace(partial, path)


def _swap_in(directory, path):
    """Put `directory` at `path`, the one there stepping aside first and then going."""
    old = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.old")
    if path.exists():
        path.rename(old)
    directory.rename(path)
    _remove(old)


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def newest_complete(path, version):
    """After replacements of the directory `path` that may have been killed half-way: of `path` and the .partial and
    .old directories beside it, the newest complete one is put at `path` and the rest removed. version(directory):
    a number that grows with each replacement (e.g. a training step), or None for one not complete (half written,
    or half removed). Returns `path`, or None when none is complete (then nothing is removed). Call it while nothing
    writes `path`: a writer's .partial would look half written."""
    path = Path(path)
    found = [path, *path.parent.glob(f"{glob.escape(path.name)}.*.partial"),
             *path.parent.glob(f"{glob.escape(path.name)}.*.old")]
    versions = {candidate: version(candidate) for candidate in found if candidate.is_dir()}
    complete = {candidate: v for candidate, v in versions.items() if v is not None}
    if not complete:
        return None
    newest = max(complete, key=lambda candidate: (complete[candidate], candidate == path))
    if newest != path:
        _swap_in(newest, path)
    for leftover in found[1:]:
        if leftover != newest:
            _remove(leftover)
    return path
