"""Where the shared (read-only) data folder is found: ``$DPDIFF_SHARED_DATA``, else ``<repo>/../shared/data``,
also when ``shared`` is a symlink to the real folder."""

from __future__ import annotations

import os

import pytest

import dpdiff.data as data_pkg
from dpdiff.data import SHARED_DATA_ENV, shared_data_dir


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlinked_shared_folder_is_followed_not_resolved(monkeypatch, tmp_path):
    store = tmp_path / "disk" / "datasets"  # the real folder, somewhere else
    (store / "data" / "mtd").mkdir(parents=True)
    checkout = tmp_path / "work" / "main"
    checkout.mkdir(parents=True)
    try:
        (tmp_path / "work" / "shared").symlink_to(store, target_is_directory=True)
    except OSError as e:  # pragma: no cover - e.g. Windows without the symlink privilege
        pytest.skip(f"cannot create a symlink here: {e}")
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    monkeypatch.setattr(data_pkg, "repo_root", lambda: checkout)

    d = shared_data_dir()
    assert d == tmp_path / "work" / "shared" / "data"  # through the link, next to the checkout
    assert d.parts[-2:] == ("shared", "data")
    assert (d / "mtd").is_dir()  # and it reaches the real data
    assert d.resolve() == (store / "data").resolve()


def test_env_overrides_and_blank_env_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setattr(data_pkg, "repo_root", lambda: tmp_path / "main")
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path / "elsewhere"))
    assert shared_data_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv(SHARED_DATA_ENV, "   ")
    assert shared_data_dir() == tmp_path / "shared" / "data"
