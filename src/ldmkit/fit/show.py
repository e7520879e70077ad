"""The plan as the lines ``ldm fit`` prints (and the report shows)."""

from __future__ import annotations

from ldmkit.fit.plan import Plan
from ldmkit.pipelines.memory import format_bytes


def _what(plan: Plan) -> str:
    c = plan.conditioner
    if c.takes_text:
        return f"captions (text transformer of width {c.text.width} trained with the UNet)"
    if c.takes_labels:
        return f"{c.num_classes} class labels"
    return "nothing (unconditional)"


def plan_lines(plan: Plan) -> list[str]:
    e = plan.estimate
    c, h, w = plan.latent_shape
    first = plan.autoencoder
    unet = plan.unet
    ae = (f"reuse {plan.autoencoder_dir} (checked against bicubic first)" if not plan.trains_autoencoder else
          f"KL, base {first.base_channels}, mult {list(first.channel_mult)}, {e.ae_parameters / 1e6:.2f} M "
          f"parameters; batch {plan.ae.batch} x {plan.ae.steps} steps (at most {plan.ae.minutes:g} min), "
          f"~{format_bytes(e.ae_memory_bytes)}")
    lines = [
        f"plan   row {plan.row} on {plan.gpus} x {plan.device}, budget {plan.budget_minutes:g} min",
        f"       resolution {plan.resolution} px, f = {plan.downsample_factor}, latent {h}x{w}x{c}; "
        f"held out {plan.val_fraction:.0%} for evaluation",
        f"       autoencoder: {ae}",
        f"       UNet: width {unet.model_channels}, mult {list(unet.channel_mult)}, attention at "
        f"{list(unet.attention_resolutions)}, {e.unet_parameters / 1e6:.2f} M parameters; conditioned on {_what(plan)}",
        f"       diffusion: batch {plan.ldm.batch} x {plan.ldm.steps} steps (at most {plan.ldm.minutes:g} min), "
        f"lr {plan.ldm.lr:g}, ~{format_bytes(e.ldm_memory_bytes)}"
        + (f", starting from {plan.init_from}" if plan.init_from else ""),
        f"       evaluation: up to {plan.eval.reconstructions} reconstructions vs bicubic, {plan.eval.samples} samples "
        f"vs the held-out split ({plan.eval.feature}), a grid of {plan.eval.grid_conditions} x {plan.eval.grid_seeds}",
        f"       expected time: {e.ae_minutes:g} + {e.ldm_minutes:g} + {e.other_minutes:g} (start-up, encoding, "
        f"evaluation) = {e.total_minutes:g} min",
        f"       numbers from: {plan.source}",
    ]
    return lines


__all__ = ["plan_lines"]
