"""Shared test settings: CPU only, deterministic, small."""

import os

import pytest
import torch

os.environ.setdefault("LDMKIT_HOME", os.path.expanduser("~/.cache/ldmkit"))
# Test tensors are tiny: one thread avoids thread start-up and spin costs that dominate them.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def make_first_stage(tmp_path_factory):
    """``make_first_stage(channel_mult)``: a tiny random KL first stage (3 latent channels) saved as a model
    directory, f = 2 ** (len(channel_mult) - 1)."""
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder

    def make(channel_mult: tuple[int, ...] = (1, 2)):
        torch.manual_seed(0)
        cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=channel_mult, num_res_blocks=1,
                                latent_channels=3, mid_attention=False)
        return save_autoencoder(tmp_path_factory.mktemp("first-stage") / "model", build_autoencoder(cfg))

    return make


@pytest.fixture(scope="session")
def recording_diffusion_losses():
    """``with recording_diffusion_losses() as losses:`` — every diffusion training step's loss, in order."""
    import contextlib

    from ldmkit.training.diffusion_task import DiffusionTask

    @contextlib.contextmanager
    def record():
        losses: list[float] = []
        original = DiffusionTask.train_step

        def recording(self, batch, step, ctx):
            logs = original(self, batch, step, ctx)
            losses.append(float(logs["loss"]))
            return logs

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(DiffusionTask, "train_step", recording)
            yield losses

    return record


@pytest.fixture
def one_thread():
    """One torch thread: tests on tiny tensors only pay for thread contention (use with ``usefixtures``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
