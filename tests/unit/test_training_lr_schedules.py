"""Learning-rate schedules: exact values at chosen updates, the old warm-up kept as the default, resume."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
import yaml

from ldmkit.config import from_dict
from ldmkit.errors import ConfigError
from ldmkit.training.config import TrainConfig
from ldmkit.training.lr_schedules import lr_factor, lr_scheduler
from ldmkit.training.run_config import check_resume_config, record_config
from ldmkit.training.run_dir import RunDirectoryError


def test_the_default_is_the_warm_up_the_loop_always_had():
    cfg = TrainConfig()
    assert cfg.lr_schedule == "constant_with_warmup"
    for warmup in (0, 1, 3, 10):
        for k in range(25):
            old = min(1.0, (k + 1) / warmup) if warmup else 1.0  # the loop's former LambdaLR factor
            assert lr_factor("constant_with_warmup", k, warmup=warmup, total=20) == old


def test_exact_values_at_chosen_updates():
    # warm-up of 4 updates, decay to 10% of the peak at update 14 (10 decay updates)
    kw = {"warmup": 4, "total": 14, "min_ratio": 0.1}
    assert [lr_factor("linear", k, **kw) for k in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert lr_factor("linear", 4, **kw) == 1.0
    assert lr_factor("linear", 9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor("linear", 13, **kw) == pytest.approx(0.1 + 0.9 * 0.1)
    assert lr_factor("linear", 14, **kw) == pytest.approx(0.1)
    assert lr_factor("linear", 100, **kw) == pytest.approx(0.1)  # beyond the schedule: its end value
    assert [lr_factor("cosine", k, **kw) for k in (0, 3, 4)] == [0.25, 1.0, 1.0]
    assert lr_factor("cosine", 9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(π/2) = 0
    assert lr_factor("cosine", 6, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor("cosine", 14, **kw) == pytest.approx(0.1)
    assert lr_factor("constant", 0) == lr_factor("constant", 10**6) == 1.0


def test_the_optimiser_sees_the_schedule_and_a_restored_scheduler_continues_it():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        return opt, lr_scheduler(opt, "cosine", warmup=2, total=10, min_ratio=0.0)

    opt, sched = make()
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_factor("cosine", k, warmup=2, total=10) for k in range(10)])
    # a scheduler restored after 6 updates (the optimiser keeps its own lr in its state) gives the same rates
    opt2, sched2 = make()
    ref_opt, ref = make()
    for _ in range(6):
        ref_opt.step()
        ref.step()
    opt2.load_state_dict(ref_opt.state_dict())
    sched2.load_state_dict(ref.state_dict())
    rest = []
    for _ in range(4):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == seen[6:]


def test_schedules_that_cannot_run_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="lr_schedule=constant has no warm-up"):
        from_dict(TrainConfig, {"lr_schedule": "constant", "warmup_steps": 5})
    with pytest.raises(ConfigError, match="raise train.decay_steps"):
        from_dict(TrainConfig, {"lr_schedule": "cosine", "warmup_steps": 10, "steps": 10})
    with pytest.raises(ConfigError, match="lr_schedule"):
        from_dict(TrainConfig, {"lr_schedule": "step"})
    assert from_dict(TrainConfig, {"lr_schedule": "linear", "warmup_steps": 10, "steps": 5,
                                   "decay_steps": 50}).decay_total == 50


@dataclass(frozen=True)
class Experiment:
    train: TrainConfig = field(default_factory=TrainConfig)


def test_changing_train_steps_on_resume_is_refused_only_when_decay_follows_it(tmp_path):
    def resume(before: TrainConfig, after: TrainConfig):
        record_config(tmp_path, Experiment(before), 0)
        return check_resume_config(tmp_path, Experiment(after), 5)

    assert resume(TrainConfig(steps=10), TrainConfig(steps=20))  # no decay: steps may change
    with pytest.raises(RunDirectoryError, match="set train.decay_steps to the old train.steps"):
        resume(TrainConfig(steps=10, lr_schedule="cosine"), TrainConfig(steps=20, lr_schedule="cosine"))
    # naming the old end explicitly keeps the schedule, so it resumes
    assert resume(TrainConfig(steps=10, lr_schedule="cosine"),
                  TrainConfig(steps=20, lr_schedule="cosine", decay_steps=10))


def test_a_run_started_before_an_option_existed_resumes_at_its_default(tmp_path):
    cfg = Experiment(TrainConfig(steps=10))
    record_config(tmp_path, cfg, 0)
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for key in ("lr_schedule", "decay_steps", "lr_min_ratio"):
        del old["train"][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert check_resume_config(tmp_path, cfg, 5) == {}
    with pytest.raises(RunDirectoryError, match="train.lr_schedule '<missing>' -> 'linear'"):
        check_resume_config(tmp_path, Experiment(TrainConfig(steps=10, lr_schedule="linear")), 5)
