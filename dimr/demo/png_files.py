"""Images shown on the page, and files offered for download, written once per content."""

import hashlib
import io
from pathlib import Path

from dimr.atomic import replaced_atomically


def png_file(image, folder):
    """The path of a PIL image as a PNG file under `folder`, made once per content: equal images (the same preview or
    panel for every visitor of a shared run) are encoded and written once, and a file is complete before anyone gets
    its path (Gradio's own save rewrites the file for every equal request, and a client fetching it meanwhile gets
    it empty)."""
    digest = hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()
    path = Path(folder) / digest / "image.png"
    if not path.exists():
        buffer = io.BytesIO()
        image.save(buffer, format="png", compress_level=1)  # enlarged pixels compress well even so, 3x faster
        saved_file(buffer.getvalue(), path)
    return str(path)


def content_file(data, folder, name):
    """The path of `data` (bytes) as a file called `name` (what a download is saved as) under `folder`, written once
    per content and name."""
    path = Path(folder) / hashlib.sha256(data).hexdigest() / name
    if not path.exists():
        saved_file(data, path)
    return str(path)


def saved_file(data, path):
    """Write `data` to `path`, complete before anyone sees it there."""
    with replaced_atomically(path) as partial:
        partial.write_bytes(data)
