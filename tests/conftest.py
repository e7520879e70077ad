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
