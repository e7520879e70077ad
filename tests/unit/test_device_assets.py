"""scripts/device_assets.py: a text encoder carried with a trimmed vocabulary encodes its texts exactly as the
untrimmed carry does, and any other text to NaN."""

import importlib.util
from pathlib import Path

import pytest
import torch

from ldmkit.assets import require
from ldmkit.errors import AssetMissingError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_assets.py"
TEXTS = ["a flat emoji of grinning face", "a 3d render of red apple, fruit, food and drink"]


def _script():
    spec = importlib.util.spec_from_file_location("device_assets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _states(folder: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state  # [N, tokens, 384]


@pytest.mark.assets
def test_a_trimmed_vocabulary_keeps_the_states_of_its_texts(tmp_path, monkeypatch):
    try:
        require("minilm")
    except AssetMissingError as exc:
        pytest.skip(str(exc))
    script = _script()
    listed = tmp_path / "captions.txt"
    listed.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    script.pack(["minilm"], tmp_path / "whole", [])
    script.pack(["minilm"], tmp_path / "trimmed", [], vocabulary_of=listed)
    size = {name: (tmp_path / name / "minilm" / "model.safetensors").stat().st_size for name in ("whole", "trimmed")}
    assert size["trimmed"] < 0.55 * size["whole"]  # the word embeddings are half of MiniLM's weights

    for name in ("whole", "trimmed"):
        monkeypatch.setenv("LDMKIT_HOME", str(tmp_path / f"home-{name}"))
        script.unpack(tmp_path / name)
    whole, trimmed = tmp_path / "home-whole" / "minilm", tmp_path / "home-trimmed" / "minilm"
    assert torch.equal(_states(trimmed, TEXTS), _states(whole, TEXTS))
    assert torch.isnan(_states(trimmed, ["a submarine"])).all()  # a word the list never used
