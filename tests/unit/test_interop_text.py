"""Text encoders: OpenCLIP's text tower (SD 2.x) maps onto transformers' CLIPTextModel as diffusers' own
converter maps it; SD 1.x's CLIP keys round-trip; CLIP's BPE vocabulary tokenises as CLIP does."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint  # noqa: E402

from ldmkit.interop.text_state import text_from_original, text_to_original  # noqa: E402

WIDTH, LAYERS, VOCAB = 64, 3, 100


def openclip_state() -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower's tensors (as under cond_stage_model.model.), random."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    state = {"token_embedding.weight": r(VOCAB, WIDTH), "positional_embedding": r(77, WIDTH),
             "ln_final.weight": r(WIDTH), "ln_final.bias": r(WIDTH), "text_projection": r(WIDTH, WIDTH),
             "logit_scale": r(())}
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        state.update({p + "attn.in_proj_weight": r(3 * WIDTH, WIDTH), p + "attn.in_proj_bias": r(3 * WIDTH),
                      p + "attn.out_proj.weight": r(WIDTH, WIDTH), p + "attn.out_proj.bias": r(WIDTH),
                      p + "ln_1.weight": r(WIDTH), p + "ln_1.bias": r(WIDTH), p + "ln_2.weight": r(WIDTH),
                      p + "ln_2.bias": r(WIDTH), p + "mlp.c_fc.weight": r(4 * WIDTH, WIDTH),
                      p + "mlp.c_fc.bias": r(4 * WIDTH), p + "mlp.c_proj.weight": r(WIDTH, 4 * WIDTH),
                      p + "mlp.c_proj.bias": r(WIDTH)})
    return {"cond_stage_model.model." + k: v for k, v in state.items()}


def test_openclip_tower_maps_like_diffusers_converter_and_keeps_the_penultimate_layer():
    state = openclip_state()
    clip, ours, notes = text_from_original(state, "openclip-h")
    assert clip.layers == LAYERS - 1 and clip.activation == "gelu" and clip.pad_token == "!"
    assert any("penultimate" in n for n in notes)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS - 1,
                                                                   num_attention_heads=1, vocab_size=VOCAB))
    theirs = convert_open_clip_checkpoint(model, state)  # diffusers' keys: text_model.*
    mine = {"text_model." + k[len("encoder."):]: v for k, v in ours.items()}
    assert set(mine) <= set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    back = text_to_original(ours, clip)
    kept = {k: v for k, v in state.items() if "resblocks.2." not in k and "projection" not in k and "logit" not in k}
    assert set(back) == set(kept) and all(torch.equal(back[k], kept[k]) for k in kept)


def test_clip_l_keys_round_trip():
    config = transformers.CLIPTextConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=1,
                                         vocab_size=VOCAB, intermediate_size=128)
    model = transformers.CLIPTextModel(config)
    state = {"cond_stage_model.transformer.text_model." + k: v for k, v in model.state_dict().items()}
    clip, ours, _ = text_from_original(state, "clip-l")
    assert (clip.width, clip.layers, clip.mlp_width, clip.vocab_size) == (WIDTH, 2, 128, VOCAB)
    back = text_to_original(ours, clip)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.assets
def test_clip_vocabulary_tokenises_as_clip():
    from ldmkit.assets import require
    from ldmkit.conditioning.clip_text import load_clip_tokenizer
    from ldmkit.errors import AssetMissingError

    try:
        folder = require("clip-vocab")
    except AssetMissingError as exc:
        pytest.skip(str(exc))
    tokenizer = load_clip_tokenizer(folder, "<|endoftext|>")
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [49407] * 70
