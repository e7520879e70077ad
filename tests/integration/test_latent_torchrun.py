"""`ldm encode` under torchrun (two CPU processes, Gloo) writes the cache one process writes."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
from ldmkit.cli.main import main as ldm

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is needed")

DATA = ["--data", "synthetic-easy", "resolution=16", "synthetic.count=20"]


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")}


def test_torchrun_encode_matches_one_process(tmp_path):
    torch.manual_seed(0)
    cfg = AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            attention_factors=())
    save_autoencoder(tmp_path / "ae", build_autoencoder(cfg), cfg)
    args = ["encode", "--autoencoder", str(tmp_path / "ae"), *DATA, "--batch-size", "4", "--shard-size", "6",
            "--device", "cpu", "--precision", "fp32"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: bitwise equality should not hang on thread counts
    try:
        assert ldm([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "ldmkit.cli.main", *args, "--out", str(tmp_path / "two")],
                            env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("latents of 20 images written") == 1  # printed by rank 0 only
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
