import os
import sys

# Test the tree these tests live in, even where another checkout is installed in the venv.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def sd1():
    """Tiny SD1.x-layout U-Net + CLIP text encoder (one build per test module)."""
    from sd_models import sd1_parts

    return sd1_parts()


@pytest.fixture(scope="module")
def sdxl():
    """Tiny SDXL-layout U-Net + two text encoders (one build per test module)."""
    from sd_models import sdxl_parts

    return sdxl_parts()
