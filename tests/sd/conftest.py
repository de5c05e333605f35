import pytest


@pytest.fixture(scope="module")
def sd1_pipe():
    """A whole tiny SD1.x pipeline (one build per test module; LoRAs loaded by a test stay loaded)."""
    from sd_pipes import tiny_sd1

    return tiny_sd1()


@pytest.fixture(scope="module")
def sdxl_pipe():
    from sd_pipes import tiny_sdxl

    return tiny_sdxl()
