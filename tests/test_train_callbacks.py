"""Training callbacks that pool values across processes: the logged value is the whole run's, not rank 0's."""

from __future__ import annotations

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from qwentune.train.callbacks import pooled_mean


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pool(rank: int, port: int, windows: list[list[list[float]]], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = [pooled_mean(values[rank]) for values in windows]
    finally:
        dist.destroy_process_group()


def test_pooled_mean_alone_and_across_two_processes():
    assert pooled_mean([1.0, 2.0]) == 1.5 and pooled_mean([]) is None
    # Rank 1 saw no value in this window (e.g. no MoE forward): the mean is rank 0's, and no process hangs.
    windows = [[[1.0, 2.0], [6.0]], [[4.0], []]]  # two logging windows: [rank 0's values, rank 1's]
    results = mp.Manager().dict()
    mp.spawn(_pool, args=(_free_port(), windows, results), nprocs=2, join=True)
    assert results[0] == results[1] == pytest.approx([3.0, 4.0])
