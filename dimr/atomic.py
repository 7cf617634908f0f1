"""Writing a file or a directory whole or not at all: it is written beside its place under a fresh .partial name,
then renamed into place, so that a reader, a concurrent writer or a run killed half-way never sees half of it.

    with replaced_atomically(out_dir) as partial:
        model.save_pretrained(partial)          # a directory (or a file) at `partial`; out_dir is replaced at the end
"""

import contextlib
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
        if partial.is_dir() and path.exists():
            # A directory cannot be renamed over a full one: the old one steps aside first, then goes.
            old = partial.with_suffix(".old")
            path.rename(old)
            partial.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif partial.exists():
            partial.unlink()
