"""Images shown on the page as PNG files, written once per content."""

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
        with replaced_atomically(path) as partial:
            partial.write_bytes(buffer.getvalue())
    return str(path)
