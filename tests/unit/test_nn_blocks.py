"""Shared building blocks: shapes, init behaviour, and agreement with naive reference computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from ldmkit.nn import (
    BasicTransformerBlock,
    CrossAttention,
    Downsample,
    FeedForward,
    ResnetBlock,
    SpatialSelfAttention,
    SpatialTransformer,
    TimestepEmbedding,
    Upsample,
    group_norm,
    timestep_embedding,
)


def naive_attention(q, k, v, mask=None):
    """softmax(Q Kᵀ / √d) V on [B, heads, N, d] tensors; mask [B, T] True = keep."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v


def randomise(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("channels,groups,expected", [(320, 32, 32), (12, 32, 12), (48, 32, 24), (7, 32, 7),
                                                      (64, 32, 32), (6, 4, 3)])
def test_group_norm_picks_largest_divisor(channels, groups, expected):
    norm = group_norm(channels, groups)
    assert norm.num_groups == expected and norm.num_channels == channels and norm.eps == 1e-6


def test_timestep_embedding_layout():
    t = torch.tensor([0.0, 3.0, 999.5])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[:, :4], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, 4:], torch.sin(t[:, None] * freqs))
    assert timestep_embedding(torch.tensor([1, 2]), 7).shape == (2, 7)  # int input, odd width
    assert torch.all(timestep_embedding(torch.tensor([1.0]), 7)[:, -1] == 0)


def test_timestep_embedding_module_distinguishes_steps():
    torch.manual_seed(0)
    mlp = TimestepEmbedding(16, 32)
    out = mlp(torch.tensor([1, 2, 500]))
    assert out.shape == (3, 32)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("scale_shift", [False, True])
def test_resnet_block_is_skip_at_init_and_uses_embedding(scale_shift):
    torch.manual_seed(0)
    block = ResnetBlock(8, 12, emb_channels=10, scale_shift=scale_shift, groups=4)
    x, emb = torch.randn(2, 8, 5, 7), torch.randn(2, 10)
    out = block(x, emb)
    assert out.shape == (2, 12, 5, 7)
    torch.testing.assert_close(out, block.skip(x))  # zero-initialised second conv
    randomise(block)
    out1, out2 = block(x, emb), block(x, torch.randn(2, 10))
    assert not torch.allclose(out1, out2)
    with pytest.raises(ValueError):
        block(x)


def test_resnet_block_without_embedding_and_same_width():
    block = ResnetBlock(8)
    x = torch.randn(1, 8, 4, 4)
    assert isinstance(block.skip, torch.nn.Identity)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("resample,size", [("down", 3), ("up", 12)])
def test_resnet_block_resample(resample, size):
    block = randomise(ResnetBlock(4, 8, emb_channels=6, resample=resample, groups=2))
    assert block(torch.randn(2, 4, 6, 6), torch.randn(2, 6)).shape == (2, 8, size, size)


def test_resample_layers():
    x = torch.randn(2, 6, 8, 10)
    assert Downsample(6)(x).shape == (2, 6, 4, 5)
    assert Downsample(6, 9, asymmetric_padding=True)(x).shape == (2, 9, 4, 5)
    torch.testing.assert_close(Downsample(6, use_conv=False)(x), F.avg_pool2d(x, 2))
    assert Upsample(6, 3)(x).shape == (2, 3, 16, 20)
    torch.testing.assert_close(Upsample(6, use_conv=False)(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    with pytest.raises(ValueError):
        Downsample(6, 9, use_conv=False)


def test_asymmetric_padding_pads_right_and_bottom_only():
    down = Downsample(1, asymmetric_padding=True)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
        down.conv.bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(down(x), x[:, :, ::2, ::2])


@pytest.mark.parametrize("heads,head_channels", [(1, None), (2, None), (1, 3)])
def test_spatial_self_attention_matches_naive(heads, head_channels):
    attn = randomise(SpatialSelfAttention(6, num_heads=heads, head_channels=head_channels, groups=3))
    x = torch.randn(2, 6, 3, 5)  # odd sizes
    b, c, h, w = x.shape
    n = attn.num_heads
    qkv = attn.qkv(attn.norm(x)).reshape(b, 3, n, c // n, h * w).transpose(-1, -2)
    ref = naive_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2]).transpose(-1, -2).reshape(b, c, h, w)
    torch.testing.assert_close(attn(x), x + attn.proj_out(ref), atol=1e-5, rtol=1e-5)


def test_spatial_self_attention_identity_at_init():
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(SpatialSelfAttention(8, num_heads=2)(x), x)
    with pytest.raises(ValueError):
        SpatialSelfAttention(8, num_heads=3)


def _split(t, heads):
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2)


def test_cross_attention_matches_naive_with_mask():
    attn = randomise(CrossAttention(6, 5, heads=2, head_dim=4))
    x, ctx = torch.randn(2, 7, 6), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    q = _split(attn.to_q(x), 2)
    k, v = (_split(t, 2) for t in attn.to_kv(ctx).chunk(2, dim=-1))
    ref = attn.to_out(naive_attention(q, k, v, mask).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x, ctx, mask), ref, atol=1e-5, rtol=1e-5)


def test_self_attention_matches_naive():
    attn = randomise(CrossAttention(6, heads=3, head_dim=2))
    x = torch.randn(2, 5, 6)
    q, k, v = (_split(t, 3) for t in attn.to_qkv(x).chunk(3, dim=-1))
    ref = attn.to_out(naive_attention(q, k, v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        attn(x, torch.randn(2, 3, 6))


def test_masked_token_has_no_effect_and_empty_context_is_finite():
    attn = randomise(CrossAttention(6, 5, heads=2, head_dim=4))
    x, ctx = torch.randn(2, 7, 6), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    changed = ctx.clone()
    changed[:, 2] = 100.0
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, changed, mask))
    assert not torch.allclose(attn(x, ctx), attn(x, changed))
    empty = attn(x, ctx, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(empty).all() and torch.all(empty == 0)


def test_feed_forward_geglu():
    ff = randomise(FeedForward(4, mult=2))
    x = torch.randn(3, 4)
    a, g = ff.proj_in(x).chunk(2, dim=-1)
    torch.testing.assert_close(ff(x), ff.proj_out(a * F.gelu(g)))
    assert ff.proj_in.out_features == 16


def test_transformer_block_uses_context():
    block = randomise(BasicTransformerBlock(8, heads=2, head_dim=4, context_dim=5))
    x, ctx = torch.randn(2, 6, 8), torch.randn(2, 3, 5)
    out = block(x, ctx)
    assert out.shape == x.shape
    assert not torch.allclose(out, block(x, torch.randn(2, 3, 5)))
    plain = BasicTransformerBlock(8, heads=2, head_dim=4)
    assert plain.attn2 is None and plain(x).shape == x.shape


@pytest.mark.parametrize("use_linear", [True, False])
def test_spatial_transformer(use_linear):
    torch.manual_seed(0)
    st = SpatialTransformer(8, heads=2, head_dim=3, depth=2, context_dim=5, use_linear=use_linear)
    x, ctx = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 5)
    torch.testing.assert_close(st(x, ctx), x)  # zero-initialised proj_out
    randomise(st)
    out = st(x, ctx)
    assert out.shape == x.shape
    assert not torch.allclose(out, st(x, torch.randn(2, 4, 5)))


def test_linear_and_conv_projections_agree():
    torch.manual_seed(0)
    lin = randomise(SpatialTransformer(8, heads=2, head_dim=4, context_dim=5, use_linear=True))
    conv = SpatialTransformer(8, heads=2, head_dim=4, context_dim=5, use_linear=False)
    state = {k: (v[..., None, None] if k.startswith("proj_") and k.endswith("weight") else v)
             for k, v in lin.state_dict().items()}
    conv.load_state_dict(state)
    x, ctx = torch.randn(1, 8, 3, 3), torch.randn(1, 2, 5)
    torch.testing.assert_close(lin(x, ctx), conv(x, ctx), atol=1e-5, rtol=1e-5)
