import pytest
import torch

# Tests run two at a time (pytest -n 2) on two cores: one thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def agent_store(monkeypatch):
    """The store torchrun's agent hosts for a job (MASTER_ADDR:MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE), here in
    the test's process for the test's life, for ranks simulated by setting RANK and WORLD_SIZE."""
    import datetime

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=10))
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(store.port)),
                        ("TORCHELASTIC_USE_AGENT_STORE", "True")):
        monkeypatch.setenv(name, value)
    yield store
