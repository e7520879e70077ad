"""Checkpoints of the ecosystem as ldmkit models, and back: CompVis latent-diffusion, Stable Diffusion 1.x / 2.x
single files (``.ckpt``, ``.safetensors``) and diffusers folders.

Each file has one job: ``rules`` / ``mapping`` (tensor-level rules and applying them), ``keys_unet`` /
``keys_vae`` / ``keys_text`` (where each parameter lives in every layout), ``safe_checkpoint`` (reading pickles
without running them), ``original_config`` / ``sd_configs`` / ``infer`` (architectures from YAML or from the
tensors), ``compvis_stages`` (the cond stages of CompVis LDMs without a text encoder), ``diffusers_config``
(diffusers' config.json), ``noise_augmentation`` (the x4 upscaler's low-resolution noise schedule, kept for
export), ``convert`` (anything → an ldmkit model directory) and ``export`` (an ldmkit model → a diffusers folder or
an SD single file).
"""
