"""Conditioner interface: class labels, condition dropout, merging, saving and loading."""

import pytest
import torch

from ldmkit.conditioning import (
    ConcatConfig,
    ConditionerConfig,
    Conditioning,
    build_conditioner,
    load_conditioner,
    merge_conditionings,
    sample_drop_mask,
)
from ldmkit.config import from_dict
from ldmkit.errors import ConfigError


def _class_conditioner(num_classes=5, dim=8, drop_prob=0.1):
    torch.manual_seed(0)
    return build_conditioner(ConditionerConfig(kind="class", num_classes=num_classes, embed_dim=dim,
                                               drop_prob=drop_prob))


def test_sample_drop_mask_rates():
    g = torch.Generator().manual_seed(0)
    assert sample_drop_mask(100, 1.0, g).all()
    assert not sample_drop_mask(100, 0.0, g).any()
    mask = sample_drop_mask(20000, 0.3, g)
    assert mask.dtype == torch.bool and mask.shape == (20000,)
    assert abs(mask.float().mean().item() - 0.3) < 0.02
    again = sample_drop_mask(20000, 0.3, torch.Generator().manual_seed(0))
    first = sample_drop_mask(20000, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(again, first)
    with pytest.raises(ConfigError):
        sample_drop_mask(4, 1.5)


def test_class_null_index_and_routes():
    cond = _class_conditioner()
    assert cond.trainable and cond.vector_dim == 8 and cond.context_dim is None and cond.concat_channels == 0
    assert cond.embedding.num_embeddings == 6  # 5 classes + null
    null = cond.null(3)
    assert null.context is None and null.vector.shape == (3, 8)
    assert torch.equal(null.vector[0], cond.embedding.weight[5])
    # -1 (no label) is encoded as the null class
    out = cond.encode_labels(torch.tensor([0, -1, 4]))
    assert torch.equal(out.vector[1], null.vector[0])
    assert not torch.equal(out.vector[0], out.vector[2])


def test_class_label_out_of_range_is_one_line_error():
    cond = _class_conditioner()
    with pytest.raises(ConfigError, match=r"0\.\.4") as info:
        cond.encode_labels(torch.tensor([5]))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        cond.encode_labels([-2])


@pytest.mark.parametrize("kind", ["class", "text"])
def test_dropout_everything_or_nothing(kind):
    torch.manual_seed(0)
    cfg = from_dict(ConditionerConfig, {"kind": kind, "num_classes": 4, "embed_dim": 16, "drop_prob": 1.0,
                                        "text": {"width": 16, "depth": 1, "heads": 2}})
    cond = build_conditioner(cfg, captions=["a red fox", "a blue owl", "green frog"]).train()
    batch = {"label": torch.tensor([0, 1, 2, 3]), "caption": ["a red fox", "a blue owl", "green frog", "owl"]}
    null = cond.null(4)
    dropped = cond.encode(batch)  # drop_prob = 1: everything is the null condition
    kept = cond.encode(batch, drop=torch.zeros(4, dtype=torch.bool))
    if kind == "class":
        assert torch.allclose(dropped.vector, null.vector)
        assert not any(torch.allclose(kept.vector[i], null.vector[i]) for i in range(4))
    else:
        t = null.context.shape[1]
        assert torch.equal(dropped.context_mask[:, :t], null.context_mask)
        assert not dropped.context_mask[:, t:].any()
        assert torch.allclose(dropped.context[:, :t], null.context, atol=1e-5)
        assert not any(torch.allclose(kept.context[i, :t], null.context[i], atol=1e-3) for i in range(4))


def test_dropout_rate_and_eval_mode():
    cond = _class_conditioner(drop_prob=0.3).train()
    n = 4000
    labels = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(1))
    out = cond.encode({"label": labels}, generator=torch.Generator().manual_seed(2))
    null = cond.null(1).vector
    rate = torch.isclose(out.vector, null).all(dim=1).float().mean().item()
    assert abs(rate - 0.3) < 0.03
    cond.eval()  # no dropout outside training
    out = cond.encode({"label": labels})
    assert not torch.isclose(out.vector, null).all(dim=1).any()
    cond.train()
    zero = _class_conditioner(drop_prob=0.0).train().encode({"label": labels})
    assert not torch.isclose(zero.vector, cond.null(1).vector).all(dim=1).any()


def test_gradients_reach_class_embedding():
    cond = _class_conditioner()
    cond.encode_labels(torch.tensor([1, 2])).vector.sum().backward()
    grad = cond.embedding.weight.grad
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0 and grad[0].abs().sum() == 0


def test_unconditional_kind():
    cond = build_conditioner(ConditionerConfig(kind="none"))
    out = cond.encode({"image": torch.zeros(2, 3, 8, 8)})
    assert out == Conditioning() and cond.null(2) == Conditioning()
    assert cond.context_dim is None and cond.vector_dim is None and not cond.trainable
    with pytest.raises(ConfigError):
        cond.encode_prompts(["a cat"])
    with pytest.raises(ConfigError):
        cond.encode_labels([0])


def test_config_validation():
    with pytest.raises(ConfigError, match="num_classes"):
        from_dict(ConditionerConfig, {"kind": "class"})
    with pytest.raises(ConfigError, match="heads"):
        from_dict(ConditionerConfig, {"kind": "text", "text": {"width": 30, "heads": 4}})
    with pytest.raises(ConfigError, match="semantic_classes"):
        from_dict(ConditionerConfig, {"concat": {"kind": "semantic"}})
    with pytest.raises(ConfigError):
        from_dict(ConditionerConfig, {"kind": "clip"})
    assert ConcatConfig(kind="masked_image", latent_channels=3).channels == 4
    assert ConcatConfig(kind="low_res").channels == 3
    assert ConcatConfig(kind="low_res", low_res_mode="encode", latent_channels=4).channels == 4
    assert ConcatConfig(kind="semantic", semantic_classes=7).channels == 7


def test_merge_conditionings():
    context, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False]] * 2)
    concat = torch.randn(2, 5, 4, 4)
    merged = merge_conditionings(Conditioning(context=context, context_mask=mask), Conditioning(concat=concat),
                                 Conditioning())
    assert merged.context is context and merged.context_mask is mask and merged.concat is concat
    assert merged.vector is None
    with pytest.raises(ValueError, match="concat"):
        merge_conditionings(Conditioning(concat=concat), Conditioning(concat=concat))
    with pytest.raises(ValueError, match="batch"):
        merge_conditionings(Conditioning(vector=torch.zeros(3, 2)), Conditioning(concat=concat))


def test_unconditional_like_keeps_concat_and_batches():
    cfg = ConditionerConfig(kind="class", num_classes=3, embed_dim=4,
                            concat=ConcatConfig(kind="semantic", semantic_classes=3, downsample_factor=4))
    cond = build_conditioner(cfg).eval()
    batch = {"label": torch.tensor([0, 2]), "segmentation": torch.randint(0, 3, (2, 16, 16))}
    c = cond.encode(batch)
    assert c.vector.shape == (2, 4) and c.concat.shape == (2, 3, 4, 4)
    u = cond.unconditional_like(c)
    assert torch.equal(u.concat, c.concat) and torch.allclose(u.vector, cond.null(2).vector)
    both = Conditioning.cat([c, u])
    assert both.vector.shape == (4, 4) and both.concat.shape == (4, 3, 4, 4)


def test_save_and_load_class_conditioner():
    cond = _class_conditioner()
    tensors, data = cond.state_for_saving()
    assert data["config"]["kind"] == "class" and data == {"config": cond.config_dict()}
    loaded = load_conditioner(tensors, data)
    labels = torch.tensor([0, 3, 4])
    assert torch.equal(loaded.encode_labels(labels).vector, cond.encode_labels(labels).vector)
