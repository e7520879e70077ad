"""Checkpoints: atomic writes, retention, resume only from complete ones, refusal of damaged or unsafe state,
storage faults, and the non-finite guard."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldmkit.cli.main import main as ldm_main
from ldmkit.errors import CheckpointError, LdmkitError
from ldmkit.io import save_model_dir
from ldmkit.training import checkpoint as checkpoint_module
from ldmkit.training.checkpoint import MANIFEST, STATE, CheckpointManager
from ldmkit.training.config import TrainConfig
from ldmkit.training.distributed import wrap
from ldmkit.training.loop import NonFiniteError, StepContext, Task, train
from ldmkit.training.run_dir import check_writable


def write_weights(directory: Path) -> None:
    directory.mkdir()
    (directory / "weights.bin").write_bytes(b"w" * 16)


def state(step: int) -> dict:
    return {"step": step, "w": torch.full((3,), float(step))}


def save_steps(manager: CheckpointManager, steps) -> None:
    for step in steps:
        manager.save(step, state(step), write_weights)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- retention and completeness -----------------------------------------------------------------------------------

def test_keep_last_and_keep_every(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, keep_every=4)
    save_steps(manager, range(1, 10))
    assert names(tmp_path) == ["step-00000004", "step-00000008", "step-00000009"]
    manager = CheckpointManager(tmp_path / "b", keep_last=3)
    save_steps(manager, range(1, 10))
    assert [s for s, _ in manager.complete()] == [7, 8, 9]
    assert torch.equal(manager.load_state(manager.latest())["w"], torch.full((3,), 9.0))


def test_incomplete_checkpoints_are_ignored_and_cleaned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    save_steps(manager, [1, 2])
    # A save killed before its rename: a hidden staging directory with everything but the manifest.
    stale = tmp_path / ".step-00000003.abcd"
    stale.mkdir()
    torch.save(state(3), stale / STATE)
    # A directory with the final name but no manifest (copied by hand, or written by an older tool).
    no_manifest = tmp_path / "step-00000004"
    no_manifest.mkdir()
    torch.save(state(4), no_manifest / STATE)
    # A directory with an unparseable name.
    (tmp_path / "step-latest").mkdir()
    assert manager.latest() == tmp_path / "step-00000002"
    assert manager.load_state(manager.latest())["step"] == 2
    save_steps(manager, [3])
    assert not stale.exists()  # stale staging directories go with the next prune
    assert manager.latest() == tmp_path / "step-00000003"


def test_resaving_a_step_replaces_it_whole(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    save_steps(manager, [1])
    manager.save(1, {"step": 1, "w": torch.zeros(2)}, write_weights)
    assert names(tmp_path) == ["step-00000001"]
    assert torch.equal(manager.load_state(manager.latest())["w"], torch.zeros(2))


def test_manifest_lists_every_file_with_its_hash(tmp_path):
    path = CheckpointManager(tmp_path).save(7, state(7), write_weights)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["step"] == 7
    assert set(manifest["files"]) == {STATE, "weights/weights.bin"}
    assert all(len(digest) == 64 for digest in manifest["files"].values())


# --- damaged and unsafe state -------------------------------------------------------------------------------------

def test_tampered_state_is_a_checkpoint_error_naming_the_file(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(1, state(1), write_weights)
    original = (path / STATE).read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    (path / STATE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path / STATE} does not match its SHA-256.*delete {path}"):
        manager.load_state(path)
    (path / STATE).write_bytes(original)
    assert manager.load_state(path)["step"] == 1
    (path / "weights" / "weights.bin").unlink()
    with pytest.raises(CheckpointError, match="weights.bin is missing"):
        manager.load_state(path)


class _Payload:
    """A pickle whose loading would run code: it creates a file."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(1, state(1), write_weights)
    target = tmp_path / "pwned"
    torch.save({"step": 1, "evil": _Payload(target)}, path / STATE)
    assert not target.exists()
    # The attacker also rewrote the manifest, so the hash check passes and torch.load must refuse.
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][STATE] = checkpoint_module.sha256_file(path / STATE)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"{STATE} is not a checkpoint this program wrote") as refused:
        manager.load_state(path)
    assert not target.exists()
    message = str(refused.value)
    assert "weights_only" not in message and "will likely succeed" not in message  # never advise running it
    assert len(message.splitlines()) == 1 and f"delete {path}" in message


# --- storage faults -----------------------------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["state", "weights", "manifest"])
def test_failed_save_never_damages_the_previous_checkpoint(tmp_path, monkeypatch, where):
    manager = CheckpointManager(tmp_path, keep_last=1)
    save_steps(manager, [1])
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    writer = write_weights
    if where == "state":
        monkeypatch.setattr(checkpoint_module.torch, "save", _no_space)
    elif where == "weights":
        def writer(directory: Path) -> None:
            write_weights(directory)
            _no_space()
    else:
        monkeypatch.setattr(checkpoint_module.json, "dump", _no_space)
    with pytest.raises(CheckpointError, match="step-00000002.*No space left on device.*intact"):
        manager.save(2, state(2), writer)
    monkeypatch.undo()
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written or removed, no staging directory left
    assert names(tmp_path) == ["step-00000001"]
    assert manager.load_state(manager.latest())["step"] == 1


def _torch_disk_full(*args, **kwargs):  # what torch.save says on a full disk
    raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                       "data/0: file write failed")


def _safetensors_disk_full(*args, **kwargs):  # what safetensors says on a full disk
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


@pytest.mark.parametrize("failure", ["torch", "safetensors"])
def test_full_disk_as_torch_and_safetensors_report_it_is_a_checkpoint_error(tmp_path, monkeypatch, failure):
    from ldmkit.io import model_dir

    manager = CheckpointManager(tmp_path, keep_last=1)
    save_steps(manager, [1])
    if failure == "torch":
        monkeypatch.setattr(checkpoint_module.torch, "save", _torch_disk_full)
    else:
        monkeypatch.setattr(model_dir, "save_file", _safetensors_disk_full)

    def weights(directory: Path) -> None:
        save_model_dir(directory, kind="x", config={}, weights={"m": {"w": torch.zeros(2)}})

    with pytest.raises(CheckpointError, match="could not write checkpoint .*step-00000002.*intact") as raised:
        manager.save(2, state(2), weights)
    assert len(str(raised.value).splitlines()) == 1
    monkeypatch.undo()
    assert names(tmp_path) == ["step-00000001"] and manager.load_state(manager.latest())["step"] == 1


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs, where the machine lets this process mount one (root, no container restriction)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_keeps_the_earlier_checkpoint(small_tmpfs):
    manager = CheckpointManager(small_tmpfs / "ckpt", keep_last=1)
    small = {"step": 1, "modules": {"m": {"w": torch.zeros(1000)}}}
    manager.save(1, small, write_weights)
    big = {"step": 2, "modules": {"m": {"w": torch.zeros(1_000_000)}}}  # 4 MB of weights in a 2 MiB file system

    def weights(directory: Path) -> None:
        save_model_dir(directory, kind="x", config={}, weights={"m": big["modules"]["m"]})

    with pytest.raises(CheckpointError, match="could not write checkpoint .*no space left on device|No space left"):
        manager.save(2, big, weights)
    assert names(small_tmpfs / "ckpt") == ["step-00000001"]
    assert torch.equal(manager.load_state(manager.latest())["modules"]["m"]["w"], small["modules"]["m"]["w"])


def test_non_finite_weights_never_make_a_complete_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(1, {"step": 1, "modules": {"generator": {"w": torch.ones(3)}}}, write_weights)
    for bad in (float("nan"), float("inf")):
        broken = {"step": 2, "modules": {"generator": {"w": torch.tensor([1.0, bad]), "n": torch.tensor(3)}}}
        with pytest.raises(CheckpointError, match=r"not finite at step 2 \(NaN/inf in generator.w\).*intact"):
            manager.save(2, broken, write_weights)
    assert names(tmp_path) == ["step-00000001"]


def test_unwritable_or_non_directory_output_fails_before_training(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(LdmkitError, match="is not a directory"):
        check_writable(a_file)
    with pytest.raises(LdmkitError, match="cannot create output directory"):
        check_writable(a_file / "run")
    with pytest.raises(LdmkitError, match="cannot create output directory"):
        check_writable(Path("/proc/ldmkit-run"))
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(LdmkitError, match="not writable"):
            check_writable(locked)

    # Through the command: one line, status 2, and no work started (no task set up, nothing written).
    code = ldm_main(["train", "autoencoder", "--config", "synthetic-kl-f4", f"train.out={a_file}",
                     "train.device=cpu", "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "is not a directory" in err and "Traceback" not in err
    assert a_file.read_text() == "x"


def test_train_checks_the_output_before_setting_up(tmp_path):
    class Boom(Task):
        def setup(self, device, train):
            raise AssertionError("setup must not run")

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(LdmkitError, match="not a directory"):
        train(Boom(), TrainConfig(out=str(a_file), device="cpu"), list(range(8)), {})


# --- the non-finite guard -----------------------------------------------------------------------------------------

class LinearTask(Task):
    """y = w·x on random data; steps listed in ``nan_steps`` produce a NaN loss, ``spike_steps`` a 1e6x loss."""

    name = "linear"

    def __init__(self, nan_steps=(), two_optimizers: bool = False, spike_steps=()):
        self.nan_steps = set(nan_steps)
        self.spike_steps = set(spike_steps)
        self.two = two_optimizers
        self.weights: list[torch.Tensor] = []

    def setup(self, device, train):
        self.model = torch.nn.Linear(4, 1)
        self.other = torch.nn.Linear(4, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.opt2 = torch.optim.SGD(self.other.parameters(), lr=0.1)

    def optimizers(self):
        return {"model": self.opt, "other": self.opt2} if self.two else {"model": self.opt}

    def modules(self):
        return {"model": self.model, "other": self.other}

    def train_step(self, batch, step, ctx: StepContext):
        x = batch["x"]
        loss = self.model(x).pow(2).mean()
        if step in self.nan_steps:
            loss = loss * float("nan")
        if step in self.spike_steps:
            loss = loss * 1e6
        ctx.step("model", loss)
        if self.two:
            loss2 = self.other(x).pow(2).mean()
            ctx.step("other", loss2 * float("nan") if step in self.nan_steps else loss2)
        self.weights.append(self.model.weight.detach().clone())
        return {"loss": loss.detach()}

    def write_model(self, directory):
        directory.mkdir(parents=True, exist_ok=True)


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"x": torch.linspace(-1, 1, 4) * (i + 1)}


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = {"out": str(tmp_path / "run"), "steps": 8, "batch_size": 4, "device": "cpu", "progress": False,
            "image_every": 0, "checkpoint_every": 0, "max_nonfinite": 3, "warmup_steps": 0}
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("two", [False, True])
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, capsys, two):
    task = LinearTask(nan_steps={2, 3, 5}, two_optimizers=two)
    train(task, _cfg(tmp_path), Points(), {})
    assert torch.equal(task.weights[2], task.weights[1]) and torch.equal(task.weights[3], task.weights[1])
    assert not torch.equal(task.weights[4], task.weights[3])
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    saved = manager.load_state(manager.latest())
    assert saved["guard"]["skipped"] == 3 * (2 if two else 1) and saved["guard"]["consecutive"] == 0
    assert saved["schedulers"]["model"]["last_epoch"] == 5  # skipped updates do not advance the schedule
    assert "update skipped (2 in a row)" in capsys.readouterr().out


@pytest.mark.parametrize("two", [False, True])
def test_too_many_consecutive_nonfinite_steps_abort(tmp_path, two):
    task = LinearTask(nan_steps={1, 3, 4, 5, 6}, two_optimizers=two)
    with pytest.raises(NonFiniteError, match=r"^3 consecutive steps .*last at step 5"):
        train(task, _cfg(tmp_path), Points(), {})
    assert len(task.weights) == 5  # stopped during step 5: training steps are counted, not updates
    assert not (tmp_path / "run" / "model").exists()


class RankLocalNonFinite(LinearTask):
    """Under DDP; at step 2 rank 1 alone sees an infinite loss (a constant added: the averaged gradient is finite)."""

    def setup(self, device, train):
        super().setup(device, train)
        self.network = wrap(self.model, device)

    def train_step(self, batch, step, ctx: StepContext):
        loss = self.network(batch["x"]).pow(2).mean()
        if step == 2 and dist.get_rank() == 1:
            loss = loss + float("inf")
        ctx.step("model", loss)
        self.weights.append(self.model.weight.detach().clone())
        return {"loss": loss.detach()}


def _rank_local_worker(rank: int, world: int, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world)
    try:
        task = RankLocalNonFinite()
        train(task, _cfg(Path(root), steps=4, batch_size=2), Points(), {})
        torch.save(task.weights, f"{root}/rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed (Gloo)")
def test_a_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    mp.spawn(_rank_local_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank-{r}.pt") for r in (0, 1))
    assert torch.equal(rank0[2], rank0[1])  # rank 0's own loss was finite, and it skipped too
    assert not torch.equal(rank0[3], rank0[2])
    for mine, theirs in zip(rank0, rank1, strict=True):
        assert torch.equal(mine, theirs)


def test_resume_from_a_damaged_latest_checkpoint_is_refused(tmp_path):
    cfg = _cfg(tmp_path, checkpoint_every=4)
    train(LinearTask(), cfg, Points(), {})
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    latest = manager.latest()
    (latest / STATE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=rf"{latest / STATE} does not match"):
        train(LinearTask(), _cfg(tmp_path, checkpoint_every=4, steps=12), Points(), {})


def test_loss_spike_guard_skips_spikes_and_resumes_its_state(tmp_path, capsys):
    task = LinearTask(spike_steps={25, 27})
    train(task, _cfg(tmp_path, steps=30, loss_spike_factor=10.0), Points(), {})
    assert torch.equal(task.weights[25], task.weights[24]) and torch.equal(task.weights[27], task.weights[26])
    assert not torch.equal(task.weights[26], task.weights[25])
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    guard = manager.load_state(manager.latest())["guard"]
    assert guard["spikes"] == 2 and guard["updates"]["model"] == 28 and guard["loss_mean"]["model"] > 0
    assert "loss spike at step 25" in capsys.readouterr().out
    # Off by default: the same spikes are applied.
    plain = LinearTask(spike_steps={25})
    train(plain, _cfg(tmp_path / "plain", steps=30), Points(), {})
    assert not torch.equal(plain.weights[25], plain.weights[24])
