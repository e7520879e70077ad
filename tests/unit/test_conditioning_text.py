"""Text conditioning: the word tokenizer, the transformer trained from scratch, the frozen MiniLM."""

import json

import pytest
import torch

from ldmkit.conditioning import ConditionerConfig, WordTokenizer, build_conditioner, load_conditioner
from ldmkit.config import from_dict
from ldmkit.errors import AssetMissingError, CheckpointError, DataError

CAPTIONS = ["A red kangaroo.", "A blue whale, swimming!", "red apple", "The red car 2", "a whale"]


def test_tokenizer_vocabulary_is_deterministic():
    tok = WordTokenizer.from_captions(CAPTIONS, min_count=1, max_length=8)
    assert tok.tokens[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    # by falling count (a: 3, red: 3, whale: 2), then alphabetically
    assert tok.tokens[4:7] == ["a", "red", "whale"]
    assert tok.tokens[7:] == sorted(tok.tokens[7:])
    assert "2" not in tok.tokens and "kangaroo" in tok.tokens
    assert WordTokenizer.from_captions(list(reversed(CAPTIONS)), max_length=8).tokens == tok.tokens
    frequent = WordTokenizer.from_captions(CAPTIONS, min_count=2, max_length=8)
    assert frequent.tokens[4:] == ["a", "red", "whale"]
    with pytest.raises(DataError):
        WordTokenizer.from_captions([], max_length=8)


def test_tokenizer_unknown_words_padding_and_truncation():
    tok = WordTokenizer.from_captions(CAPTIONS, max_length=5)
    ids, mask = tok(["Red ZEBRA", "", "a red whale a red whale"])
    assert ids.shape == (3, 5) and mask.dtype == torch.bool
    assert ids[0].tolist() == [tok.bos_id, tok.index["red"], tok.unk_id, tok.eos_id, tok.pad_id]
    assert mask[0].tolist() == [True, True, True, True, False]
    assert ids[1, :2].tolist() == [tok.bos_id, tok.eos_id] and mask[1].sum() == 2
    assert ids[2].tolist()[-1] == tok.eos_id and mask[2].all()  # cut to max_length, [EOS] kept
    assert torch.equal(mask, ids != tok.pad_id)
    assert tok.decode(ids[0].tolist()) == "red [UNK]"


def test_tokenizer_json_round_trip(tmp_path):
    tok = WordTokenizer.from_captions(CAPTIONS, max_length=6)
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(tok.to_dict()))
    loaded = WordTokenizer.from_dict(json.loads(path.read_text()))
    assert loaded.tokens == tok.tokens and loaded.max_length == 6
    texts = ["a red whale", "unknown words here"]
    assert all(torch.equal(a, b) for a, b in zip(loaded(texts), tok(texts)))
    with pytest.raises(CheckpointError):
        WordTokenizer.from_dict({"format": "something else"})
    with pytest.raises(CheckpointError):
        WordTokenizer.from_dict({**tok.to_dict(), "tokens": ["a", "b"]})


def _text_conditioner(**text):
    torch.manual_seed(0)
    cfg = from_dict(ConditionerConfig, {"kind": "text", "embed_dim": 24, "drop_prob": 0.0,
                                        "text": {"width": 16, "depth": 2, "heads": 2, "max_length": 8, **text}})
    return build_conditioner(cfg, captions=CAPTIONS)


def test_text_encoder_shapes_and_distinct_contexts():
    cond = _text_conditioner().eval()
    assert cond.context_dim == 24 and cond.vector_dim is None and cond.trainable
    out = cond.encode({"caption": ["a red whale", "a blue kangaroo", "red"]})
    assert out.context.shape == (3, 5, 24) and out.context_mask.shape == (3, 5)
    assert out.context_mask.sum(1).tolist() == [5, 5, 3]
    assert torch.all(out.context[2, 3:] == 0)  # padding positions are zero
    assert not torch.allclose(out.context[0], out.context[1], atol=1e-3)
    # a caption's real tokens do not depend on the padding added for longer neighbours
    alone = cond.encode_prompts(["red"])
    assert torch.allclose(alone.context[0], out.context[2, :3], atol=1e-5)
    null = cond.null(2)
    assert null.context.shape == (2, 2, 24) and null.context_mask.all()
    assert torch.allclose(null.context[0], cond.encode_prompts([""]).context[0])


def test_gradients_reach_text_encoder():
    cond = _text_conditioner().train()
    out = cond.encode_prompts(["a red whale", "blue"])
    (out.context * torch.randn_like(out.context)).sum().backward()
    params = dict(cond.named_parameters())
    assert params["encoder.token.weight"].grad[cond.tokenizer.index["whale"]].abs().sum() > 0
    assert params["encoder.blocks.0.qkv.weight"].grad.abs().sum() > 0
    assert params["encoder.position"].grad.abs().sum() > 0


def test_text_conditioner_save_and_load():
    cond = _text_conditioner().eval()
    tensors, data = cond.state_for_saving()
    json.dumps(data)  # JSON-able
    assert data["tokenizer"]["tokens"] == cond.tokenizer.tokens
    loaded = load_conditioner(tensors, json.loads(json.dumps(data))).eval()
    prompts = ["a red whale", "an unseen word"]
    assert torch.equal(loaded.encode_prompts(prompts).context, cond.encode_prompts(prompts).context)
    with pytest.raises(CheckpointError):
        load_conditioner(tensors, {"config": data["config"]})


# ------------------------------------------------------------------------------ pretrained MiniLM
@pytest.fixture(scope="module")
def minilm():
    try:
        from ldmkit.assets import require
    except ModuleNotFoundError:
        pytest.skip("ldmkit.assets is not available")
    try:
        require("minilm")
    except AssetMissingError as exc:
        pytest.skip(str(exc))
    return build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))


@pytest.mark.assets
def test_minilm_context_mask_and_frozen(minilm):
    minilm.train()
    assert not minilm.model.training and not minilm.trainable and minilm.context_dim == 384
    assert list(minilm.parameters()) == [] and minilm.state_dict() == {}
    prompts = ["a red kangaroo", "a whale swimming in the deep blue sea"]
    out = minilm.encode({"caption": prompts})
    lengths = [len(minilm.tokenizer(p)["input_ids"]) for p in prompts]
    assert out.context.shape == (2, max(lengths), 384)
    assert out.context_mask.sum(1).tolist() == lengths
    assert not out.context.requires_grad
    assert torch.all(out.context[0, lengths[0]:] == 0)
    assert not torch.allclose(out.context[0, 1], out.context[1, 1])
    again = minilm.encode_prompts(prompts[:1])  # cached, same result
    assert torch.allclose(again.context[0], out.context[0, : lengths[0]], atol=1e-5)


@pytest.mark.assets
def test_minilm_null_is_empty_prompt(minilm):
    null = minilm.null(2)
    assert null.context.shape == (2, 2, 384)  # [CLS] [SEP]
    dropped = minilm.encode_prompts(["a red kangaroo", "owl"], drop=torch.tensor([True, False]))
    assert torch.allclose(dropped.context[0, :2], null.context[0], atol=1e-5)
    assert dropped.context_mask[0].sum() == 2


def test_text_conditioner_through_model_directory(tmp_path):
    from ldmkit.io import load_weights, read_model_dir, save_model_dir

    cond = _text_conditioner().eval()
    tensors, data = cond.state_for_saving()
    save_model_dir(tmp_path / "model", kind="conditioner", config=data["config"], weights={"conditioner": tensors},
                   extra={"tokenizer": data["tokenizer"]})
    info = read_model_dir(tmp_path / "model")
    loaded = load_conditioner(load_weights(info, "conditioner"), {"config": info.config, **info.extra}).eval()
    assert torch.equal(loaded.encode_prompts(["red whale"]).context, cond.encode_prompts(["red whale"]).context)
