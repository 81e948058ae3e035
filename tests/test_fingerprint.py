"""Content keys of caches (avatar_lightning.fingerprint) and the synthetic dataset's keys built on them."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from avatar_lightning.fingerprint import content_key, file_digest, file_stamp, head_model_digest
from avatar_lightning.io import write_json
from avatar_lightning.synth import layout
from avatar_lightning.synth.config import GeneratorConfig, check_or_write_manifest
from avatar_lightning.synth.uv_cache import UVCache
from tests.real_fixtures import fixture_flame_path


def test_content_key_tells_values_apart() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    keys = [content_key(x), content_key(x.reshape(3, 2)), content_key(x.double()), content_key(x + 1e-6),
            content_key([x, None]), content_key([x, 0]), content_key([x], None), content_key(x.numpy())]
    assert len(set(keys)) == len(keys) - 1 and keys[0] == keys[-1]  # a tensor keys as its array
    assert content_key(x.clone()) == keys[0] and len(keys[0]) == 16
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_file_digest_follows_the_bytes(tmp_path) -> None:
    path = tmp_path / "m.obj"
    path.write_bytes(b"v 0 0 0\n")
    first = file_digest(path)
    os.utime(path, ns=(10**18, 10**18))
    assert file_digest(path) == first  # touched, same bytes: same digest
    path.write_bytes(b"v 0 0 1\n")  # same size, new content
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    assert file_digest(path) != first and file_stamp(path) == f"8:{2 * 10**18}"
    with pytest.raises(FileNotFoundError, match="source file not found: .*gone.obj"):
        file_digest(tmp_path / "gone.obj")
    assert head_model_digest("builtin") == "builtin"


def test_synthetic_dataset_is_keyed_by_the_flame_file_content(tmp_path) -> None:
    """Same config, FLAME file replaced at the same path: another dataset folder; the old manifest
    is refused rather than reused."""
    shutil.copytree(fixture_flame_path().parent, tmp_path / "flame")
    flame = tmp_path / "flame" / fixture_flame_path().name
    config = GeneratorConfig(identities=2, head_model=str(flame))
    before = config.hash()
    check_or_write_manifest(tmp_path / "data", config)
    assert GeneratorConfig(identities=2, head_model=str(flame)).hash() == before
    with open(flame, "ab") as f:
        f.write(b"\n")
    os.utime(flame, ns=(3 * 10**18, 3 * 10**18))
    assert config.hash() != before and config.to_dict()["head_model_digest"] == file_digest(flame)
    with pytest.raises(RuntimeError, match="head_model_digest"):
        check_or_write_manifest(tmp_path / "data", config)
    assert GeneratorConfig(identities=2).hash() != GeneratorConfig(identities=3).hash()
    with pytest.raises(FileNotFoundError, match="nowhere.pkl"):
        GeneratorConfig(head_model=str(tmp_path / "nowhere.pkl")).hash()


def test_synthetic_uv_cache_is_keyed_by_the_dataset_content(tmp_path) -> None:
    config = GeneratorConfig(identities=2)
    manifest = check_or_write_manifest(tmp_path, config)

    def folder(content_hash: str | None):
        write_json(tmp_path / layout.MANIFEST, {**manifest, "content_hash": content_hash})
        return UVCache(tmp_path, config, rig=None, size=16, fewshot_cameras=[0, 1]).folder

    assert folder("aaaa") == folder("aaaa") != folder("bbbb")
    assert folder("aaaa").parent == tmp_path and folder("aaaa").name.startswith("uv_cache_")
