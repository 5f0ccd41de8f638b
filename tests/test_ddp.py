"""One fold across two processes with DistributedDataParallel (gloo on CPU), as torchrun would launch it."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from helpers import TINY, make_tiny_dataset, prepared_run, tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, tmp: str) -> None:
    """What torchrun gives each process: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as td
    from bmteach.__main__ import main
    from bmteach.data import read_manifest
    from bmteach.train import dist_from_env, init_distributed, train_fold

    dist = dist_from_env()
    device = init_distributed(dist, torch.device("cpu"))
    tmp_path, data_root = Path(tmp), Path(data)
    # 1) the library call: each rank returns its model; DDP must keep the parameters identical
    cfg = tiny_config(data_root, folds=[0], epochs=2, per_class=8)
    manifest = read_manifest(tmp_path / "direct" / "manifest.csv")
    model = train_fold(cfg, tmp_path / "direct", data_root, manifest, 0, device, 0, dist)
    torch.save({k: v for k, v in model.named_parameters()}, tmp_path / f"params{rank}.pt")
    td.barrier()
    # 2) the command line under torchrun: rank 0 prepares and writes, rank 1 only trains
    code = main(["train", "--data", data, "--out", str(tmp_path / "cli"), *TINY, "--num-folds", "2", "--folds", "0",
                 "--epochs", "2", "--per-class", "8"])
    (tmp_path / f"exit{rank}").write_text(str(code))


def test_two_process_gloo_fold(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", per_class=6)
    prepared_run(data, tmp_path / "direct", tiny_config(data, folds=[0], epochs=2, per_class=8))
    mp.spawn(_worker, args=(2, free_port(), str(data), str(tmp_path)), nprocs=2, join=True)

    p0 = torch.load(tmp_path / "params0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params1.pt", weights_only=True)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)                 # gradients were all-reduced
    fold = tmp_path / "direct" / "fold0"
    assert (fold / "model.pt").is_file() and (fold / "oof.csv").is_file()
    records = (fold / "progress.jsonl").read_text().splitlines()
    assert records and '"fold": 0' in records[0]                      # one writer: no interleaved duplicates
    assert len([r for r in records if '"phase": "done"' in r]) == 1
    # each rank saw half of the 4 x 8 = 32 balanced images per epoch (batch 8 -> 2 steps each)
    assert '"steps_per_epoch": 2' in records[0]

    assert (tmp_path / "exit0").read_text() == "0" and (tmp_path / "exit1").read_text() == "0"
    cli = tmp_path / "cli"
    assert (cli / "config.json").is_file() and (cli / "fold0" / "model.pt").is_file()
    assert not (cli / ".lock").exists()
