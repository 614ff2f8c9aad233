"""Logged values pooled across processes (router_aux_loss, preference rewards): the whole run's, not rank 0's."""

from __future__ import annotations

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from qwentune.train.distributed import pooled_means


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pool(rank: int, port: int, windows: list[list[dict]], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = [pooled_means(totals[rank]) for totals in windows]
    finally:
        dist.destroy_process_group()


def test_pooled_means_alone_and_across_two_processes():
    assert pooled_means({"a": (3.0, 2)}) == {"a": 1.5} and pooled_means({"a": (0.0, 0)}) == {} == pooled_means({})
    windows = [  # logging windows: [rank 0's (sum, count) totals, rank 1's]
        [{"a": (3.0, 2)}, {"a": (6.0, 1)}],
        # Rank 1 saw no value (e.g. no MoE forward): the mean is rank 0's, and no process hangs.
        [{"a": (4.0, 1)}, {"a": (0.0, 0)}],
        # A name only rank 0 has (a KTO share without undesirable replies on rank 1): pooled all the same.
        [{"a": (1.0, 1), "b": (5.0, 2)}, {"a": (3.0, 1)}],
    ]
    results = mp.Manager().dict()
    mp.spawn(_pool, args=(_free_port(), windows, results), nprocs=2, join=True)
    assert results[0] == results[1]
    assert [window.get("a") for window in results[0]] == pytest.approx([3.0, 4.0, 2.0])
    assert results[0][2]["b"] == pytest.approx(2.5)
