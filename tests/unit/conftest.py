"""Fixtures shared by the model-layer unit tests."""

import pytest
import torch

from saltx.models import attention


@pytest.fixture
def one_thread():
    """Bitwise checks assume one BLAS thread (MKL splits small GEMMs across threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=[8, 64], ids=["tile8", "tile64"])
def tile(request, monkeypatch):
    """Attention tile size: small tiles exercise the multi-tile code path on tiny inputs."""
    monkeypatch.setattr(attention, "BLOCK", request.param)
    return request.param
