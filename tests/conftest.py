"""Test-wide settings. Imported before torch, so the OpenMP wait policy applies (see avatar_lightning)."""

import pytest  # noqa: E402
import torch  # noqa: E402

import avatar_lightning  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch loads)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they gain nothing from more, and on a shared 2-core machine two threads contend (measured: a tiny
    prior step takes ~10x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
