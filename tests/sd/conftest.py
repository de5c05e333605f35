import pytest


@pytest.fixture(scope="session")
def sd1_pipe():
    """A whole tiny SD1.x pipeline (one build per session: LoRAs a test loads stay loaded but inactive, which changes no output)."""
    from sd_pipes import tiny_sd1

    return tiny_sd1()


@pytest.fixture(scope="session")
def sdxl_pipe():
    from sd_pipes import tiny_sdxl

    return tiny_sdxl()
