"""Study storage paths: what Ray reports as a checkpoint's path, turned back into a URI the tracker can open."""

from __future__ import annotations

from pathlib import Path

from orchestrator.storage import exists, read_text, storage_uri, write_text


def test_storage_uri_puts_the_scheme_back(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/runs"
    ray_path = f"{tmp_path}/runs/study/train_runs/r/epoch_0002"  # the path on the file system, as Ray gives it
    assert storage_uri(root, ray_path) == f"file://{tmp_path}/runs/study/train_runs/r/epoch_0002"
    assert storage_uri(root + "/", ray_path) == storage_uri(root, ray_path)
    assert storage_uri(root, "/elsewhere/epoch_0002") == "/elsewhere/epoch_0002"  # not under the root: as given
    assert storage_uri(str(tmp_path / "runs"), ray_path) == ray_path  # a local root: Ray's path is the location


def test_text_round_trip_through_a_uri(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/a/b/record.json"
    assert not exists(uri)
    write_text(uri, "{}")
    assert exists(uri) and read_text(uri) == "{}" and (tmp_path / "a" / "b" / "record.json").read_text() == "{}"
