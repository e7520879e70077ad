"""Where open_clip imports (it needs a torchvision matching torch): an OpenCLIP text tower converted into
CLIPTextModel gives OpenCLIP's penultimate-layer states after ln_final (Stable Diffusion 2.x's context), and
CLIP's vocabulary tokenises as ``open_clip.tokenize``. ViT-H/14 itself (SD 2.x) gave relative error 0.0 on
open_clip 3.3.0 / torch 2.11 (docs/interop.md); here the smaller ViT-B-32 tower keeps the test fast."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from ldmkit.assets.clip_vocab import vocab_from_bpe  # noqa: E402
from ldmkit.conditioning.clip_text import text_model_config  # noqa: E402
from ldmkit.conditioning.config import ConditionerConfig  # noqa: E402
from ldmkit.interop.text_state import text_from_original  # noqa: E402


def test_openclip_penultimate_states_and_tokens():
    torch.manual_seed(0)
    m = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    state = {"cond_stage_model.model." + k: v for k, v in m.state_dict().items() if not k.startswith("visual.")}
    clip, ours, _ = text_from_original(state, "openclip-h")
    hf = transformers.CLIPTextModel(text_model_config(ConditionerConfig(kind="clip_text", clip=clip))).eval()
    hf.load_state_dict({k[len("encoder."):]: v for k, v in ours.items()}, strict=True)
    prompts = ["a photo of a cat", "An astronaut riding a horse on the moon, 4k", ""]
    tokens = open_clip.tokenize(prompts)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    vocab, merges = vocab_from_bpe(gzip.open(bpe).read().decode())
    tok = transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(x.split()) for x in merges], pad_token="!",
                                     model_max_length=77)
    assert torch.equal(tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids, tokens)
    with torch.no_grad():
        x = m.token_embedding(tokens) + m.positional_embedding
        first = getattr(m.transformer, "batch_first", True)
        x = x if first else x.permute(1, 0, 2)
        for block in m.transformer.resblocks[:-1]:  # layer "penultimate" of SD 2.x's FrozenOpenCLIPEmbedder
            x = block(x, attn_mask=m.attn_mask)
        ref = m.ln_final(x if first else x.permute(1, 0, 2))
        got = hf(input_ids=tokens).last_hidden_state
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-5
