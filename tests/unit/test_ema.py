import torch

from ldmkit.training.ema import EMA


def test_ema_follows_the_warmup_formula_and_round_trips():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.99)
    expected = torch.zeros(1, 2)
    for n in range(30):
        with torch.no_grad():
            model.weight.fill_(float(n + 1))
        decay = min(0.99, (1 + n) / (10 + n))
        assert ema.current_decay() == decay
        ema.update(model)
        expected = decay * expected + (1 - decay) * model.weight.detach()
        torch.testing.assert_close(ema.model.weight, expected)
    assert ema.updates == 30
    other = EMA(torch.nn.Linear(2, 1, bias=False), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 30 and other.decay == 0.99
    torch.testing.assert_close(other.model.weight, ema.model.weight)


def test_ema_without_warmup_uses_the_decay_and_copies_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 2.0))
    torch.testing.assert_close(ema.model.running_mean, torch.full((2,), 5.0))
    assert not any(p.requires_grad for p in ema.model.parameters())
