import os

import pytest
import torch

# Two cores on CI: one intra-op thread per test process keeps timings stable and avoids oversubscription.
torch.set_num_threads(int(os.environ.get("SEGKD_TEST_THREADS", "2")))

# SEGKD_SHARED: where ../shared is when the tests run from a copy of the project (the mutation run's mutants/).
SHARED = os.environ.get("SEGKD_SHARED") or os.path.join(os.path.dirname(__file__), "..", "..", "shared")
CAMVID_ROOT = os.path.abspath(os.path.join(SHARED, "datasets", "CamVid"))
REFERENCE_VECTORS = os.path.abspath(os.path.join(SHARED, "reference", "loss_vectors.json"))


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
