"""LoRA adapters (Hu et al. 2021) for ldmkit models, as peft layers; files in diffusers' and kohya's layouts."""

from ldmkit.adapters.apply import (
    check_scale,
    components,
    load_lora,
    loaded_loras,
    merge_loras,
    model_factors,
    parse_lora,
    unload_loras,
    write_lora,
)
from ldmkit.adapters.config import LoraConfig
from ldmkit.adapters.factors import Adapter, LoraFactor
from ldmkit.adapters.files import (
    ADAPTERS_DIR,
    KOHYA_SUFFIX,
    find_adapters,
    kohya_path,
    read_adapter,
    save_adapter,
)

__all__ = ["ADAPTERS_DIR", "KOHYA_SUFFIX", "Adapter", "LoraConfig", "LoraFactor", "check_scale", "components",
           "find_adapters", "kohya_path", "load_lora", "loaded_loras", "merge_loras", "model_factors", "parse_lora",
           "read_adapter", "save_adapter", "unload_loras", "write_lora"]
