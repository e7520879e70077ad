"""Pre-computed MiniLM prompt states: same encodings as the network, lazy network, safe refusal of bad files."""

from __future__ import annotations


import pytest
import torch

from ldmkit.conditioning import ConditionerConfig, build_conditioner, load_conditioner
from ldmkit.conditioning.config import PretrainedTextConfig
from ldmkit.conditioning.prompt_states import PromptStates, write_prompt_states
from ldmkit.errors import AssetMissingError, CheckpointError, ConfigError

PROMPTS = ["red apple", "a smiling face with sunglasses", "cat", "red apple"]


@pytest.fixture(scope="module")
def minilm():
    from ldmkit.assets import require

    try:
        require("minilm")
    except AssetMissingError as exc:
        pytest.skip(str(exc))
    return build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))


@pytest.fixture(scope="module")
def states_file(minilm, tmp_path_factory):
    return write_prompt_states(tmp_path_factory.mktemp("states") / "prompts.safetensors", PROMPTS, minilm)


def _with_states(path, **pretrained) -> ConditionerConfig:
    return ConditionerConfig(kind="pretrained_text", drop_prob=0.0,
                             pretrained=PretrainedTextConfig(states_file=str(path), **pretrained))


@pytest.mark.assets
def test_file_holds_each_distinct_prompt_and_the_empty_one(states_file):
    states = PromptStates(states_file)
    assert len(states) == 4 and "" in states and "cat" in states and "dog" not in states
    assert states.get("dog") is None and states.get("cat").shape[1] == 384


@pytest.mark.assets
def test_lookup_matches_the_network_without_loading_it(minilm, states_file):
    cond = build_conditioner(_with_states(states_file))
    got = cond.encode_prompts(PROMPTS[:3])
    assert cond.model is None  # every prompt was in the file
    want = minilm.encode_prompts(PROMPTS[:3])
    assert torch.equal(got.context_mask, want.context_mask)
    assert torch.allclose(got.context, want.context, atol=2e-3, rtol=2e-3)  # stored as float16
    null = cond.null(2)
    assert torch.allclose(null.context, minilm.null(2).context, atol=2e-3, rtol=2e-3)
    assert cond.model is None


@pytest.mark.assets
def test_missing_prompt_loads_the_network_lazily(minilm, states_file):
    cond = build_conditioner(_with_states(states_file))
    out = cond.encode_prompts(["cat", "a dog on a skateboard"])
    assert cond.model is not None
    want = minilm.encode_prompts(["cat", "a dog on a skateboard"])
    assert torch.allclose(out.context, want.context, atol=2e-3, rtol=2e-3)


@pytest.mark.assets
def test_missing_prompt_without_the_network_names_both_fixes(states_file, monkeypatch):
    import ldmkit.conditioning.pretrained_text as pretrained_text

    def no_asset(name):
        raise AssetMissingError(f"run `ldm assets fetch {name}`")

    monkeypatch.setattr(pretrained_text, "_asset_dir", no_asset)
    cond = build_conditioner(_with_states(states_file))
    assert cond.encode_prompts(["cat"]).context.shape[0] == 1
    with pytest.raises(AssetMissingError, match="not in .*prompts.safetensors.*ldm assets fetch minilm"):
        cond.encode_prompts(["a unicorn"])


@pytest.mark.assets
def test_other_token_limit_is_refused(states_file):
    with pytest.raises(ConfigError, match="max_length"):
        build_conditioner(_with_states(states_file, max_length=16))


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*ldm encode --text"):
        PromptStates(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a prompt-states file"):
        PromptStates(bad)


@pytest.mark.assets
def test_saved_model_whose_states_file_is_gone_falls_back_to_the_network(states_file, tmp_path):
    import shutil

    moved = tmp_path / "prompts.safetensors"
    shutil.copy(states_file, moved)
    cond = build_conditioner(_with_states(moved))
    tensors, data = cond.state_for_saving()
    moved.unlink()
    loaded = load_conditioner(tensors, data)
    assert loaded.precomputed is None and loaded.model is not None
    assert loaded.encode_prompts(["cat"]).context.shape[-1] == 384


@pytest.mark.assets
def test_cli_encodes_data_captions_and_extra_prompts(tmp_path, minilm):
    from ldmkit.cli.main import main

    extra = tmp_path / "prompts.txt"
    extra.write_text("a blue unicorn\n\nred apple\n")
    out = tmp_path / "states.safetensors"
    assert main(["encode", "--text", "--data", "synthetic-easy", "synthetic.count=6", "resolution=16", "--prompts", str(extra),
                 "--out", str(out), "--device", "cpu"]) == 0
    states = PromptStates(out)
    assert "a blue unicorn" in states and "red apple" in states and "" in states
    want = minilm.encode_prompts(["a blue unicorn"]).context[0]
    assert torch.allclose(states.get("a blue unicorn"), want, atol=2e-3, rtol=2e-3)
    assert main(["encode", "--text", "--out", str(out)]) == 2  # nothing to encode: a one-line error
