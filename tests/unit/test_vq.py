"""Vector quantiser: straight-through gradients, losses, EMA codebook, dead codes, perplexity; VQModel interface."""

import pytest
import torch
import torch.nn.functional as F

import ldmkit.autoencoders.quantizer as quantizer_module
from ldmkit.autoencoders import AutoencoderConfig, VQModel, VectorQuantizer
from ldmkit.autoencoders.quantizer import nearest_codes, perplexity_and_usage


def _quantizer(codes, **kw) -> VectorQuantizer:
    codes = torch.as_tensor(codes, dtype=torch.float32)
    q = VectorQuantizer(codes.shape[0], codes.shape[1], **kw)
    with torch.no_grad():
        q.codebook.copy_(codes)
        if q.use_ema:
            q.embed_sum.copy_(codes)
    return q


def _as_map(vectors) -> torch.Tensor:
    """[N, D] vectors → [1, D, 1, N] feature map."""
    return torch.as_tensor(vectors, dtype=torch.float32).t()[None, :, None, :].contiguous()


def test_straight_through_gradient_is_the_identity():
    torch.manual_seed(0)
    q = _quantizer(torch.randn(8, 3))
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    out, aux = q(z)
    z_q, _ = q.quantize(z.detach())
    assert torch.allclose(out, z_q, atol=1e-6)  # forward: the nearest codes (up to rounding of z + (z_q − z))
    w = torch.randn_like(z)
    (out.pow(3) * w).sum().backward()
    # as if the quantiser were the identity applied to z_q: d/dz = 3 z_q² · w
    assert torch.allclose(z.grad, 3 * z_q.detach().pow(2) * w, atol=1e-5)


def test_gradient_reaches_the_encoder_of_a_vq_model():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="vq", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            groups=4, codebook_size=16)
    model = VQModel(cfg)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    rec, aux = model(x)
    (rec - x).abs().mean().backward()  # reconstruction only: no codebook/commitment term
    assert model.encoder.conv_in.weight.grad is not None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None or model.quantizer.codebook.grad.abs().sum() == 0


def test_codebook_and_commitment_loss_values():
    q = _quantizer([[0.0, 0.0], [4.0, 4.0]], beta=0.25)
    z = _as_map([[1.0, 0.0], [3.0, 5.0]]).requires_grad_(True)  # nearest: code 0, code 1
    out, aux = q(z)
    assert aux["indices"].flatten().tolist() == [0, 1]
    mse = (1.0 + 0.0 + 1.0 + 1.0) / 4  # mean over the 4 elements of (z − e)²
    assert aux["codebook_loss"].item() == pytest.approx(mse)
    assert aux["commitment_loss"].item() == pytest.approx(0.25 * mse)
    assert aux["vq_loss"].item() == pytest.approx(1.25 * mse)
    aux["vq_loss"].backward()
    # codebook loss pulls codes to the encodings: d/de ‖sg[z] − e‖²/4 = (e − z)/2 ; commitment moves only z
    assert torch.allclose(q.codebook.grad, torch.tensor([[-0.5, 0.0], [0.5, -0.5]]))
    assert torch.allclose(z.grad.flatten(), 0.25 * 2 * (z - _as_map([[0.0, 0.0], [4.0, 4.0]])).detach().flatten() / 4)


def test_ema_update_moves_codes_toward_assigned_encodings():
    q = _quantizer([[0.0, 0.0], [10.0, 10.0]], ema=True, decay=0.5)
    assert not q.codebook.requires_grad
    enc = torch.tensor([[1.0, 1.0], [2.0, 0.0], [1.5, 2.0]])  # all nearest to code 0, mean (1.5, 1.0)
    q.train()
    _, aux = q(_as_map(enc))
    assert aux["codebook_loss"].item() == 0.0
    # cluster sizes: 0.5·1 + 0.5·3 = 2 and 0.5; sums: 0.5·(0, 0) + 0.5·(4.5, 3) ; code 0 = (2.25, 1.5)/2
    assert torch.allclose(q.cluster_size, torch.tensor([2.0, 0.5]))
    assert torch.allclose(q.codebook[0], torch.tensor([1.125, 0.75]), atol=1e-4)
    assert torch.allclose(q.codebook[1], torch.tensor([10.0, 10.0]), atol=1e-3)  # unassigned: unchanged
    before = (torch.tensor([1.5, 1.0]) - torch.zeros(2)).norm()
    assert (torch.tensor([1.5, 1.0]) - q.codebook[0]).norm() < before
    q.eval()
    code = q.codebook.clone()
    q(_as_map(enc))
    assert torch.equal(q.codebook, code)  # no updates outside training


def test_dead_codes_are_reinitialised_from_batch_encodings():
    torch.manual_seed(0)
    codes = torch.tensor([[0.0, 0.0]] + [[100.0 + i, 100.0] for i in range(7)])
    q = _quantizer(codes, decay=0.5, dead_code_threshold=0.6)
    enc = torch.randn(20, 2) * 0.1  # all nearest to code 0
    q.train()
    q(_as_map(enc))
    # usage of codes 1..7 fell to 0.5 < 0.6: each now equals one of the batch encodings
    for k in range(1, 8):
        assert (enc - q.codebook[k]).abs().sum(dim=1).min() < 1e-6
        assert q.cluster_size[k] == 1.0
    assert torch.equal(q.codebook[0], codes[0])  # gradient-learned codebook: live code untouched
    # disabled by default
    q2 = _quantizer(codes, decay=0.5)
    q2.train()
    q2(_as_map(enc))
    assert torch.equal(q2.codebook.detach(), codes)


def test_perplexity_of_uniform_assignment_is_the_number_of_codes():
    perplexity, usage = perplexity_and_usage(torch.full((16,), 3.0))
    assert perplexity.item() == pytest.approx(16.0) and usage.item() == 1.0
    perplexity, usage = perplexity_and_usage(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    assert perplexity.item() == pytest.approx(1.0) and usage.item() == 0.25
    q = _quantizer(torch.eye(4) * 3)
    _, aux = q(_as_map(torch.eye(4) * 3))  # each code hit exactly once
    assert aux["perplexity"].item() == pytest.approx(4.0) and aux["usage"].item() == 1.0


def test_nearest_codes_in_chunks_match_cdist(monkeypatch):
    torch.manual_seed(0)
    flat, codebook = torch.randn(50, 4), torch.randn(13, 4)
    monkeypatch.setattr(quantizer_module, "_MAX_DISTANCE_ELEMENTS", 13 * 7)  # 7 rows per chunk
    assert torch.equal(nearest_codes(flat, codebook), torch.cdist(flat, codebook).argmin(dim=1))


def test_vq_model_encodes_continuous_latents_and_quantises_in_decode():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="vq", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            groups=4, codebook_size=16)
    model = VQModel(cfg).eval()
    with torch.no_grad():
        model.quantizer.codebook.normal_()
    x = torch.rand(1, 3, 8, 12) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        z_q, idx = model.quantizer.quantize(z)
        assert not torch.allclose(z, z_q)  # continuous, not yet quantised
        rec, aux = model(x)
        assert torch.allclose(model.decode(z), rec, atol=1e-6)
        assert torch.allclose(model.decode(z_q), rec, atol=1e-6)  # quantising twice changes nothing
        assert torch.allclose(model.decode_indices(idx), rec, atol=1e-6)
        assert torch.equal(aux["indices"], idx)
    assert F.mse_loss(z, z_q) > 0
