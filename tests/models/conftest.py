import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """The hub is unreachable here: fail fast instead of waiting on network timeouts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than several (and far faster on a shared, busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
