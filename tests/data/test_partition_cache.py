"""The on-disk partition cache: two arrays (indices + offsets) whatever the population;
an older one-member-per-partition file is still read; a file that does not describe the
partitions is recomputed."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.data import partition_cache
from bouquet.data import partition_indices

LABELS = np.repeat(np.arange(10), 120)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOUQUET_DATA", str(tmp_path))
    return tmp_path


def _only_cache_file(root):
    files = list((root / "partitions").glob("*.npz"))
    assert len(files) == 1
    return files[0]


def test_cache_holds_two_arrays_and_gives_back_the_same_partitions(
    private_cache,
) -> None:
    first = partition_indices(
        LABELS, 300, "dirichlet", alpha=0.5, seed=3, min_partition_size=0
    )
    path = _only_cache_file(private_cache)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["indices", "offsets"]
        assert f["offsets"].shape == (301,)
    again = partition_indices(
        LABELS, 300, "dirichlet", alpha=0.5, seed=3, min_partition_size=0
    )
    assert len(again) == 300 and all(
        np.array_equal(a, b) for a, b in zip(first, again, strict=True)
    )


def test_an_older_cache_file_is_still_read(private_cache) -> None:
    first = partition_indices(LABELS, 7, "iid", seed=1)
    path = _only_cache_file(private_cache)
    # the old layout, same name
    np.savez(path.with_suffix(""), **{f"p{i}": p for i, p in enumerate(first)})
    parts = partition_cache.cached_partitions(LABELS, _settings_of(path, first))
    assert parts is not None and all(
        np.array_equal(a, b) for a, b in zip(first, parts, strict=True)
    )
    # and rewritten in the two-array layout
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["indices", "offsets"]


def test_offsets_that_do_not_describe_the_partitions_are_recomputed(
    private_cache,
) -> None:
    first = partition_indices(LABELS, 7, "iid", seed=1)
    path = _only_cache_file(private_cache)
    with np.load(path, allow_pickle=False) as f:
        flat = f["indices"]
    np.savez(
        path.with_suffix(""),
        indices=flat,
        offsets=np.array([0, 5, 3, 9, 9, 9, 9, flat.size]),
    )
    assert partition_cache.cached_partitions(LABELS, _settings_of(path, first)) is None
    again = partition_indices(LABELS, 7, "iid", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def _settings_of(path, parts):
    """The settings tuple ``partition_indices`` keys a non-unbalanced cache file
    with."""
    import inspect

    d = {
        k: v.default for k, v in inspect.signature(partition_indices).parameters.items()
    }
    settings = (
        "iid",
        len(parts),
        d["alpha"],
        d["labels_per_client"],
        d["min_partition_size"],
        1,
    )
    assert partition_cache.cache_file(LABELS, settings) == path
    return settings
