"""Files written whole or not at all (dimr.atomic): a reader never sees half a file or a half-written model."""

import pathlib
import threading

import pytest

from dimr.atomic import newest_complete, replaced_atomically


def test_a_directory_is_replaced_whole_and_a_failed_write_leaves_the_old_one(tmp_path):
    target = tmp_path / "model"
    with replaced_atomically(target) as partial:
        partial.mkdir()
        (partial / "weights").write_text("first")
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as partial:
            partial.mkdir()
            (partial / "weights").write_text("half")
            raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "first"
    with replaced_atomically(target) as partial:
        partial.mkdir()
        (partial / "config").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["config"], "the old directory is gone, not merged"
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no partial or old directory left behind"


def test_writers_of_the_same_file_at_once_each_leave_a_whole_file(tmp_path):
    """The app writes one PNG per content; equal requests finishing together write the same path at once."""
    target = tmp_path / "image.png"
    data = bytes(range(256)) * 4096

    def write():
        with replaced_atomically(target) as partial:
            partial.write_bytes(data)

    writers = [threading.Thread(target=write) for _ in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert target.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_a_swap_interrupted_between_its_renames_keeps_the_new_directory_for_recovery(tmp_path, monkeypatch):
    """A second Ctrl-C after the old directory stepped aside: the whole new one stays beside it, and
    `newest_complete` puts it in place."""
    target = tmp_path / "checkpoint"

    def write(version):
        with replaced_atomically(target) as partial:
            partial.mkdir()
            (partial / "version").write_text(version)

    def version(directory):
        return int((directory / "version").read_text()) if (directory / "version").is_file() else None

    write("1")
    rename = pathlib.Path.rename

    def interrupted(source, destination):
        rename(source, destination)
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write("2")
    monkeypatch.undo()
    assert not target.exists()
    assert newest_complete(target, version) == target
    assert (target / "version").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
