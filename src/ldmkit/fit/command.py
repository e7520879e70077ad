"""``ldm fit`` as a function: survey → plan → check RUN/ → stages (:func:`ldmkit.fit.run.run_fit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmkit.config import to_dict
from ldmkit.errors import ConfigError
from ldmkit.fit.conditioning import choose_conditioning
from ldmkit.fit.estimates import device_info
from ldmkit.fit.plan import Plan, PlanRequest, make_plan, replan
from ldmkit.fit.record import PLAN_FILE, PlanChanged, check_or_write_plan
from ldmkit.fit.show import plan_lines
from ldmkit.fit.survey import DataSurvey, folder_config, survey_folder
from ldmkit.runtime import is_main_process, pick_device, world_size


def _say(text: str) -> None:
    if is_main_process():
        print(text, flush=True)


def _model_config(path: str, kind: str, flag: str) -> dict[str, Any]:
    from ldmkit.io import read_model_dir

    try:
        return read_model_dir(path, kind=kind).config
    except Exception as exc:  # noqa: BLE001 - a wrong path or kind is the user's, in one line
        raise ConfigError(f"{flag} {path}: {exc}") from None


def build_plan(survey: DataSurvey, *, budget_seconds: float, conditioning: str, device: Any, gpus: int,
               autoencoder: str, init_from: str, overrides: list[str]) -> Plan:
    init_config = _model_config(init_from, "ldm", "--init-from") if init_from else None
    if init_from and not autoencoder:  # fine-tuning keeps the model's own first stage
        autoencoder = str(Path(init_from) / "autoencoder")
    ae_config = _model_config(autoencoder, "autoencoder", "--autoencoder") if autoencoder else None
    request = PlanRequest(budget_seconds=budget_seconds, conditioning=conditioning, autoencoder_dir=autoencoder,
                          init_from=init_from, init_config=init_config,
                          autoencoder_config=(ae_config or {}).get("model") if ae_config else None)
    info = device_info(device, gpus)
    return replan(make_plan(survey, info, request), overrides, info, survey)


def required_assets(plan: Plan) -> list[str]:
    """Assets the stages will load, so a missing one stops the run before training, not after it."""
    needed = []
    if plan.trains_autoencoder and plan.ae_loss.perceptual_weight > 0 or plan.eval.lpips:
        needed.append("lpips")
    if plan.eval.feature == "efflite0":
        needed.append("efficientnet-lite0")
    return needed


def fit(*, folder: str, out: Path, budget_seconds: float, conditioning: str | None, gpus: int, device: str,
        autoencoder: str, init_from: str, overrides: list[str], dry_run: bool, restart: bool,
        stop_after: str | None) -> Path:
    from ldmkit.assets import require

    if gpus != world_size() and world_size() > 1:
        raise ConfigError(f"--gpus {gpus} but torchrun started {world_size()} processes; give --gpus {world_size()}")
    survey = survey_folder(folder)
    kind = choose_conditioning(survey, conditioning)
    torch_device = pick_device(device)
    plan = build_plan(survey, budget_seconds=budget_seconds, conditioning=kind, device=torch_device, gpus=gpus,
                      autoencoder=autoencoder, init_from=init_from, overrides=overrides)
    for line in survey.lines() + plan_lines(plan):
        _say(line)
    record = {"plan": to_dict(plan), "survey": survey.to_dict(),
              "options": {"folder": str(Path(folder).expanduser().resolve()), "conditioning": kind,
                          "time_seconds": budget_seconds, "gpus": gpus, "autoencoder": autoencoder,
                          "init_from": init_from, "overrides": overrides}}
    main = is_main_process()
    if dry_run:  # never clears RUN/: a changed plan is only reported
        try:
            check_or_write_plan(out, record, restart=False)
        except PlanChanged as exc:
            _say(f"note: {exc}")
            return out / PLAN_FILE
        _say(f"dry run: plan written to {out / PLAN_FILE}; run the same command without --dry-run to train")
        return out / PLAN_FILE
    resuming = check_or_write_plan(out, record, restart=restart) if main else True
    missing = []
    for name in required_assets(plan):
        try:
            require(name)
        except Exception:  # noqa: BLE001 - AssetMissingError, gathered into one line
            missing.append(name)
    if missing:
        raise ConfigError(f"the plan needs the asset(s) {', '.join(missing)}: run `ldm assets fetch "
                          f"{' '.join(missing)}` first (or set eval.feature / eval.lpips / ae_loss.perceptual_weight)")
    if resuming and main:
        _say(f"resuming {out}")
    from ldmkit.fit.run import run_fit

    label_source = folder_config(folder).label_source
    model = run_fit(plan, folder, label_source, out, torch_device, stop_after=stop_after)
    if model.is_dir():
        _say(f"model: {model}\nreport: {out / 'report.html'}\nevaluation: {out / 'eval' / 'eval.json'}")
    return model


__all__ = ["build_plan", "fit", "required_assets"]
