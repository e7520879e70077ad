"""One rank-aware training loop, driven by a task (autoencoder, diffusion).

The loop owns what every trainer needs: the run directory, resume from the latest complete
checkpoint, data position, the learning-rate schedule, precision, the non-finite guard, progress bar,
TensorBoard, periodic image grids, checkpoints, preemption (SIGTERM / SIGUSR1 → save and exit 143;
Ctrl-C / SIGINT → save and exit 130)
and the final model directory. It locks the run directory for its whole life, refuses a directory that holds
other files, and on resume refuses a config the checkpoint cannot continue under (``run_dir``,
``run_config``). A task owns its networks and losses: ``train_step`` computes losses
and hands each to ``StepContext.step(name, loss)``, which does backward, clipping and the update.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ldmkit.errors import CheckpointError, ConfigError, LdmkitError
from ldmkit.runtime import autocast_dtype, is_main_process, pick_device, seed_everything, world_size
from ldmkit.training.checkpoint import CheckpointManager
from ldmkit.training.config import TrainConfig
from ldmkit.training.data_stream import BatchStream
from ldmkit.training.lr_schedules import lr_scheduler
from ldmkit.training.distributed import (
    any_rank,
    gathered,
    is_distributed,
    load_module_state,
    load_optimizer_state,
    local_device,
    module_state_dict,
    optimizer_state_dict,
    process_group,
    rank_seed,
    same_on_all_ranks,
    write_digest,
)
from ldmkit.progress import progress_bar
from ldmkit.training.rng import rng_state, set_rng_state
from ldmkit.training.run_config import check_resume_config, describe_changes, record_config, record_start
from ldmkit.training.run_dir import (BEST_DIR, VALIDATION_LOG, RunLock, check_run_contents, check_run_path,
                                    check_writable)

PREEMPTED_EXIT_CODE = 143
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C, as shells report it


class NonFiniteError(LdmkitError):
    """Too many consecutive steps produced a NaN/inf loss or gradient."""


class Preempted(SystemExit):
    """Raised after a SIGTERM/SIGUSR1 (status 143) or SIGINT (status 130) once the current step is saved."""

    def __init__(self, code: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(code)


class Task:
    """What a trainer plugs into the loop. Subclasses set up networks in ``setup``."""

    name = "task"
    compiles = False  # whether setup honours train.compile

    def setup(self, device: torch.device, train: TrainConfig) -> None:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every module whose state a checkpoint must hold (trainable ones and EMA copies)."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any], step: int, ctx: "StepContext") -> dict[str, float | torch.Tensor]:
        """One micro-batch of update ``step`` (``train.accumulate`` calls per update, the same ``step``): losses go
        to ``ctx.step``; work done once per update (an EMA) belongs where ``ctx.updating`` is true."""
        raise NotImplementedError

    def write_model(self, directory: Path) -> None:
        """Write the inference model directory (safetensors + config.json)."""
        raise NotImplementedError

    def images(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Named image grids [3, H, W] in [0, 1] for TensorBoard and the run directory (optional)."""
        return {}

    def validate(self, step: int) -> dict[str, float]:
        """Scores on held-out data at ``step`` (optional; ``train.validate_every``). Must leave every random state
        as it found it, so a validated run resumes exactly like one that is not. The score named by
        :attr:`best_by` (lower is better) decides which model is kept in ``RUN/best``."""
        return {}

    best_by: str | None = None

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def finish(self, run_dir: Path) -> None:
        """Work after the last step, before the final model is written (e.g. the latent scale)."""

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Entered around a micro-batch that does not end its update: skip the gradient averaging over processes
        there (see :func:`ldmkit.training.distributed.no_sync`). Averaging anyway is only slower."""
        return contextlib.nullcontext()


class StepContext:
    """Backward + clip + optimiser step for one named optimiser, with autocast and the non-finite guard.

    With ``train.accumulate = N`` the loop runs the task's ``train_step`` on N micro-batches per update
    (``micro`` = 0 … N-1): each ``step`` call adds the gradient of loss / N, and only the last micro-batch
    (``updating``) clips, checks and applies the summed gradient — the gradient of the mean loss over all N·B
    samples, as one batch of N·B would give.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                 train: TrainConfig, device: torch.device):
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.train = train
        self.device = device
        self.dtype = autocast_dtype(device, train.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.consecutive_nonfinite = 0
        self.skipped = 0
        self._nonfinite_step = -1
        self.spikes = 0
        self.loss_mean: dict[str, float] = {}  # running mean loss per optimiser, for the loss-spike guard
        self.updates: dict[str, int] = {}
        self.step_index = 0
        self.batch_index = 0
        self.accumulate = train.accumulate
        self.micro = 0  # which micro-batch of the update is running
        self._loss_sums: dict[str, torch.Tensor] = {}  # per optimiser, over the update's micro-batches

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    @property
    def updating(self) -> bool:
        """Whether this micro-batch ends the update (always, without accumulation)."""
        return self.micro == self.accumulate - 1

    def step(self, name: str, loss: torch.Tensor) -> torch.Tensor | None:
        """Apply one update of optimiser ``name`` from ``loss``; returns the gradient norm (NaN if skipped), or
        None on a micro-batch that only adds its gradient."""
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if self.micro == 0:
            optimizer.zero_grad(set_to_none=True)
        if self.accumulate == 1:
            self.scaler.scale(loss).backward()
        else:
            self.scaler.scale(loss / self.accumulate).backward()  # Σ ∇(loss_i / N) = ∇ of the mean over N·B
            so_far = self._loss_sums.get(name) if self.micro else None
            self._loss_sums[name] = loss.detach() if so_far is None else so_far + loss.detach()
            if not self.updating:
                return None
            loss = self._loss_sums.pop(name) / self.accumulate  # the guards judge the update's mean loss
        self.scaler.unscale_(optimizer)
        max_norm = self.train.grad_clip if self.train.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        # Each rank's loss is its own: all ranks skip alike, or their weights (and next collectives) part ways.
        (nonfinite,) = any_rank(not bool(torch.isfinite(loss.detach()) & torch.isfinite(norm)), device=self.device)
        finite = not nonfinite
        if not finite and self.scaler.is_enabled():
            # fp16 overflow: the scaler skips the step and lowers its scale; that is normal, not a fault.
            self.scaler.step(optimizer)
            self.scaler.update()
            return norm
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            # Counted per training step: a step whose two updates (generator, discriminator) both fail counts once.
            if self._nonfinite_step != self.step_index:
                self.consecutive_nonfinite += 1
                self._nonfinite_step = self.step_index
            self.skipped += 1
            print(f"warning: non-finite {name} loss or gradient at step {self.step_index} "
                  f"(batch {self.batch_index}); update skipped ({self.consecutive_nonfinite} in a row)")
            if self.consecutive_nonfinite >= self.train.max_nonfinite:
                raise NonFiniteError(
                    f"{self.consecutive_nonfinite} consecutive steps had a NaN/inf {name} loss or gradient "
                    f"(last at step {self.step_index}); lower train.lr, check the data, or use precision=fp32"
                )
            return norm
        if self._nonfinite_step != self.step_index:  # a finite update does not undo this step's failed one
            self.consecutive_nonfinite = 0
        if self.train.loss_spike_factor and self._is_spike(name, loss):
            optimizer.zero_grad(set_to_none=True)
            self.spikes += 1
            print(f"warning: {name} loss spike at step {self.step_index} (batch {self.batch_index}): "
                  f"{float(loss.detach()):.4g} > {self.train.loss_spike_factor:g} x running mean "
                  f"{self.loss_mean[name]:.4g}; update skipped ({self.spikes} so far)")
            return norm
        self.scaler.step(optimizer)
        self.scaler.update()
        if name in self.schedulers:
            self.schedulers[name].step()
        return norm


    SPIKE_WARMUP = 20  # updates before the running mean is trusted
    SPIKE_MOMENTUM = 0.98

    def _is_spike(self, name: str, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is a spike against this optimiser's running mean (every rank decides alike)."""
        value = float(loss.detach())
        mean, count = self.loss_mean.get(name), self.updates.get(name, 0)
        spike = mean is not None and count >= self.SPIKE_WARMUP and value > self.train.loss_spike_factor * abs(mean)
        (spike,) = any_rank(spike, device=self.device)
        if not spike:
            self.loss_mean[name] = value if mean is None else self.SPIKE_MOMENTUM * mean + (1 - self.SPIKE_MOMENTUM) * value
            self.updates[name] = count + 1
        return spike

    def guard_state(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive_nonfinite, "spikes": self.spikes,
                "loss_mean": dict(self.loss_mean), "updates": dict(self.updates)}

    def load_guard_state(self, state: dict[str, Any]) -> None:
        self.skipped = int(state["skipped"])
        self.consecutive_nonfinite = int(state["consecutive"])
        self.spikes = int(state.get("spikes", 0))
        self.loss_mean = {k: float(v) for k, v in state.get("loss_mean", {}).items()}
        self.updates = {k: int(v) for k, v in state.get("updates", {}).items()}


def estimate_checkpoint_bytes(task: Task, optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Bytes of the next checkpoint: module states twice (training state + inference weights) plus two
    float32 moments per optimised parameter (Adam-type optimisers), with 10% headroom."""
    modules = sum(t.numel() * t.element_size() for m in task.modules().values() for t in m.state_dict().values())
    moments = sum(2 * 4 * p.numel() for o in optimizers.values() for g in o.param_groups for p in g["params"])
    return int(1.1 * (2 * modules + moments))


class _PreemptionFlag:
    """SIGTERM / SIGUSR1 / SIGINT set a flag; the loop saves after the current step and exits 143 (130 for
    SIGINT). A second Ctrl-C does not wait for the save: it interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self.exit_code = PREEMPTED_EXIT_CODE
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_PreemptionFlag":
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.raised:
                raise KeyboardInterrupt
            self.exit_code = INTERRUPTED_EXIT_CODE
            print("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)", flush=True)
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _mean_logs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Each logged value averaged over an update's micro-batches (None, e.g. the gradient norm of a micro-batch
    that applied no update, is left out), kept on its device until it is logged."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        values = [part[key] for part in parts if part.get(key) is not None]
        if values:
            merged[key] = sum(values[1:], values[0]) / len(values)
    return merged


def _scalar(value: float | torch.Tensor) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def train(task: Task, train_cfg: TrainConfig, dataset: Any, resolved_config: Any) -> Path:
    """Train ``task`` on ``dataset``; resumes when the run directory holds a checkpoint. Returns the model dir.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process runs this with its own share of the data and the
    task's networks in DistributedDataParallel; rank 0 alone logs and writes checkpoints and the model.
    """
    if train_cfg.compile and not task.compiles:  # rather than an option that quietly changes nothing
        raise ConfigError(f"train.compile is not supported by the {task.name} trainer (only the diffusion trainer "
                          "compiles its network); leave it out")
    device = local_device(pick_device(train_cfg.device))
    run_dir = check_run_path(train_cfg.out)
    with process_group(device), contextlib.ExitStack() as held:
        if is_main_process():  # rank 0 alone writes the run directory, so it alone holds the lock
            check_writable(run_dir)
            held.enter_context(RunLock(run_dir))
            check_run_contents(run_dir)
        return _train(task, train_cfg, dataset, resolved_config, device, run_dir)


def _train(task: Task, train_cfg: TrainConfig, dataset: Any, resolved_config: Any, device: torch.device,
           run_dir: Path) -> Path:
    run = _Run(task, train_cfg, dataset, device, run_dir)
    step = run.resume(resolved_config)
    if is_distributed():
        # Distinct noise, timesteps and dropout per rank (rank 0's saved generator state is not reused).
        seed_everything(rank_seed(train_cfg.seed, step))
    if run.main:
        record_config(run_dir, resolved_config, step)
        record_start(run_dir, step, device, world_size())
    run.open_logs(step)
    with _PreemptionFlag() as preempt:
        while step < train_cfg.steps:
            logs, batch = run.update(step, preempt)
            step += 1
            run.log(step, logs)
            run.look(step, batch)
            out_of_time = bool(train_cfg.max_minutes) and run.minutes() > train_cfg.max_minutes
            # Every rank must take the same decision, or one would wait forever in the next collective.
            stopping, out_of_time = any_rank(preempt.raised, out_of_time, device=device)
            if stopping or out_of_time or step == train_cfg.steps or (
                train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0
            ):
                run.save(step)
            if stopping:
                run.close_progress()
                print(f"stopped by signal at step {step}; checkpoint saved, rerun the same command to resume")
                raise Preempted(preempt.exit_code)
            if out_of_time:
                print(f"time budget of {train_cfg.max_minutes:g} min reached at step {step}; finishing the run")
                break
    return run.finish()


class _Run:
    """One start of a training run on this rank: the task's networks and optimisers, the data stream, the
    checkpoints, and (rank 0) the logs. Every rank calls every method; rank 0 alone writes files."""

    def __init__(self, task: Task, train_cfg: TrainConfig, dataset: Any, device: torch.device, run_dir: Path):
        self.task, self.train, self.device, self.run_dir = task, train_cfg, device, run_dir
        self.main = is_main_process()
        # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrapping).
        seed_everything(train_cfg.seed)
        task.run_dir = run_dir  # for tasks that write files of their own there as they train (EMA snapshots)
        task.setup(device, train_cfg)
        self.optimizers = task.optimizers()
        if self.main:
            check_writable(run_dir, needed_bytes=estimate_checkpoint_bytes(task, self.optimizers))
        self.schedulers = {name: lr_scheduler(opt, train_cfg.lr_schedule, warmup=train_cfg.warmup_steps,
                                              total=train_cfg.decay_total, min_ratio=train_cfg.lr_min_ratio)
                           for name, opt in self.optimizers.items()}
        self.ctx = StepContext(self.optimizers, self.schedulers, train_cfg, device)
        self.stream = BatchStream(dataset, train_cfg.batch_size, seed=train_cfg.seed,
                                  num_workers=train_cfg.num_workers)
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", train_cfg.keep_last, train_cfg.keep_every)
        self.writer = self.progress = None

    def resume(self, resolved_config: Any) -> int:
        """Restore the latest complete checkpoint, if any; the step training continues from."""
        found, latest = (self.checkpoints.complete() or [(0, None)])[-1]
        # Checked before loading: restoring sharded (FSDP) state is collective, so every rank must take part.
        if not same_on_all_ranks(found, self.device):
            raise CheckpointError(f"the processes found different checkpoints in {self.run_dir / 'checkpoints'} "
                                  f"(this one: step {found}); put train.out on a file system every node shares")
        if latest is None:
            return 0
        changes = check_resume_config(self.run_dir, resolved_config, found)
        state = self.checkpoints.load_state(latest)
        step = _restore(state, self.task, self.optimizers, self.schedulers, self.ctx, self.stream, latest)
        if self.main:
            print(f"resuming {self.run_dir} from step {step} ({latest.name})")
            if changes:
                print(f"config changed since the last start: {describe_changes(changes)}")
        return step

    def open_logs(self, step: int) -> None:
        """TensorBoard and the progress bar (rank 0), and the clocks of the run and of the throughput window."""
        if self.main:
            self.writer = _tensorboard(self.run_dir / "tb")
            if self.train.progress:
                self.progress = progress_bar(total=self.train.steps, initial=step, desc=f"train {self.task.name}")
        self.batches: Iterator[dict[str, Any]] = iter(self.stream)
        self.start_time = self.window_start = time.perf_counter()
        self.window_images = 0

    def minutes(self) -> float:
        return (time.perf_counter() - self.start_time) / 60

    def update(self, step: int, preempt: "_PreemptionFlag") -> tuple[dict[str, Any], dict[str, Any]]:
        """One optimiser update over ``train.accumulate`` micro-batches; its logs and last batch."""
        accumulate = self.train.accumulate
        start = (self.stream.state_dict(), rng_state()) if accumulate > 1 else None
        micro_logs = []
        for micro in range(accumulate):
            try:
                batch = _to_device(next(self.batches), self.device)
            except Exception:
                # Ctrl-C reaches data-loader workers too, which then end: the signal, not the loader, is the
                # news. (Several processes stop together at the end of a step instead: a save here would be
                # one-sided.)
                if not preempt.raised or is_distributed():
                    raise
                self.save(step, start)
                print(f"stopped by signal at step {step}; checkpoint saved, rerun the same command to resume")
                raise Preempted(preempt.exit_code) from None
            self.ctx.step_index, self.ctx.batch_index, self.ctx.micro = step, self.stream.batches_consumed, micro
            with self.task.no_sync() if micro < accumulate - 1 else contextlib.nullcontext():
                micro_logs.append(self.task.train_step(batch, step, self.ctx))
        self.window_images += self.train.batch_size * accumulate * world_size()
        return (micro_logs[0] if accumulate == 1 else _mean_logs(micro_logs)), batch

    def log(self, step: int, logs: dict[str, Any]) -> None:
        """Scalars every ``train.log_every`` steps (rank 0): TensorBoard and the progress bar."""
        if self.main and (step % self.train.log_every == 0 or step == self.train.steps):
            elapsed = max(time.perf_counter() - self.window_start, 1e-9)
            scalars = {k: _scalar(v) for k, v in logs.items()}
            scalars["img_per_s"] = self.window_images / elapsed
            scalars["lr"] = next(iter(self.optimizers.values())).param_groups[0]["lr"]
            if self.writer is not None:
                for key, value in scalars.items():
                    self.writer.add_scalar(f"{self.task.name}/{key}", value, step)
            if self.progress is not None:
                self.progress.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k != "lr"}, refresh=False)
            self.window_start, self.window_images = time.perf_counter(), 0
        if self.progress is not None:
            self.progress.update(1)

    def look(self, step: int, batch: dict[str, Any]) -> None:
        """Image grids every ``train.image_every`` steps and validation every ``train.validate_every`` (rank 0,
        on whole networks: a sharded EMA is gathered around them)."""
        for every, action in ((self.train.image_every, _write_images), (self.train.validate_every, _validate)):
            if every and (step % every == 0 or step == self.train.steps):
                with _whole_networks(self.task):
                    if self.main:
                        action(self.task, step, self.run_dir, self.writer, batch)

    def save(self, at_step: int, start: tuple[dict, dict] | None = None) -> None:
        """A checkpoint of step ``at_step``. ``start``: the data position and RNG state at the start of the step,
        for a save in the middle of an accumulated update (the weights have not moved yet; resuming redoes the
        step's micro-batches)."""
        # Every rank takes part: sharded (FSDP) weights, optimiser states and EMA are gathered onto rank 0.
        modules = self.task.modules()
        with _whole_networks(self.task):
            state = {
                "step": at_step,
                "modules": {name: module_state_dict(m) for name, m in modules.items()},
                "optimizers": {name: optimizer_state_dict(o, modules) for name, o in self.optimizers.items()},
                "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
                "scaler": self.ctx.scaler.state_dict(),
                "data": self.stream.state_dict() if start is None else start[0],
                "rng": rng_state() if start is None else start[1],
                "guard": self.ctx.guard_state(),
                "task": self.task.extra_state(),
            }
            if self.main:
                self.checkpoints.save(at_step, state, self.task.write_model)

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def finish(self) -> Path:
        """The model directory of the trained networks (rank 0 writes it); the digests of every rank's networks."""
        self.close_progress()
        model_dir = self.run_dir / "model"
        ema = getattr(self.task, "ema", None)
        write_digest({**self.task.modules(), **({"ema": ema.model} if ema is not None else {})})
        with _whole_networks(self.task):
            if self.main:
                self.task.finish(self.run_dir)
                self.task.write_model(model_dir)
                if self.writer is not None:
                    self.writer.close()
                print(f"model written to {model_dir}")
        return model_dir


def _whole_networks(task: Task) -> contextlib.AbstractContextManager:
    """Entered by every rank around rank 0's use of whole networks (model directory, previews): an EMA sharded
    over the ranks (``train.parallel=fsdp``) is gathered there."""
    ema = getattr(task, "ema", None)
    return gathered(ema) if ema is not None else contextlib.nullcontext()


def _restore(state: dict[str, Any], task: Task, optimizers, schedulers, ctx: StepContext, stream,
             source: Path) -> int:
    modules = task.modules()
    for name, module in modules.items():
        if name not in state["modules"]:
            raise CheckpointError(f"{source} has no '{name}' state; it was written by another kind of run")
        # A config changed since the checkpoint: say which keys and shapes differ, in one line.
        load_module_state(module, state["modules"][name], f"{source} ({name})")
    for name, opt in optimizers.items():
        load_optimizer_state(opt, state["optimizers"][name], modules, f"{source} ({name} optimiser)")
    for name, sched in schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    ctx.scaler.load_state_dict(state["scaler"])
    ctx.load_guard_state(state["guard"])
    stream.load_state_dict(state["data"])
    task.load_extra_state(state.get("task", {}))
    set_rng_state(state["rng"])
    return int(state["step"])


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))


def _validate(task: Task, step: int, run_dir: Path, writer, batch: dict[str, Any]) -> None:
    """Run the task's validation, log it (TensorBoard, RUN/validation.jsonl) and keep the best model in RUN/best.

    The best score so far is read back from the log, so a resumed run keeps comparing against it."""
    from ldmkit.evaluation.distributed import this_rank_alone

    # Rank 0 alone validates while the others wait: its FD evaluation must not shard over them.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []), \
            this_rank_alone():
        scores = task.validate(step)  # no random state of the run moves: resume stays exact
    if not scores:
        return
    log = run_dir / VALIDATION_LOG
    earlier = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    earlier = [record for record in earlier if record["step"] < step]  # a redone step replaces its record
    key = task.best_by
    best = min((r["scores"][key] for r in earlier if key in r.get("scores", {})), default=math.inf)
    improved = key is not None and key in scores and scores[key] < best
    record = {"step": step, "scores": scores, "best": improved}
    log.write_text("".join(json.dumps(r) + "\n" for r in [*earlier, record]))
    if writer is not None:
        for name, value in scores.items():
            writer.add_scalar(f"{task.name}/val_{name}", value, step)
    if improved:
        task.write_model(run_dir / BEST_DIR)
        print(f"step {step}: validation {key} {scores[key]:.4g} is the best so far; model kept in {run_dir / BEST_DIR}")


def _write_images(task: Task, step: int, run_dir: Path, writer, batch: dict[str, Any]) -> None:
    from ldmkit.io.images import save_grid

    grids = task.images(batch, step)
    for name, grid in grids.items():
        save_grid(grid, run_dir / "images" / f"{name}-{step:08d}.png")
        if writer is not None:
            writer.add_image(f"{task.name}/{name}", grid, step)


__all__ = ["NonFiniteError", "Preempted", "StepContext", "Task", "train"]
