"""How `kairay up` shares a machine's cores between the vLLM-CPU worker and everything else."""

from __future__ import annotations

from serve_apps.local import CoreSplit, split_cores


def test_the_worker_gets_every_core_but_the_last() -> None:
    assert split_cores({0, 1}) == CoreSplit(engine=(0,), system=(1,))
    split = split_cores({3, 0, 2, 1, 7})
    assert split == CoreSplit(engine=(0, 1, 2, 3), system=(7,))
    assert split is not None and split.engine_binding == "0,1,2,3"


def test_one_core_is_not_split() -> None:
    assert split_cores({5}) is None
