import pytest


@pytest.fixture(scope="session")
def sd1_pipe():
    """A whole tiny SD1.x pipeline, one per session (LoRAs a test loads stay loaded, switched off after it)."""
    from sd_pipes import tiny_sd1

    return tiny_sd1()


@pytest.fixture(scope="session")
def sdxl_pipe():
    from sd_pipes import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture(autouse=True)
def _loras_off_after_each_test(request):
    """Tests share the session pipelines: leave every LoRA a test activated switched off again."""
    yield
    from lorakit.sd.loras import LoraStack

    for name in ("sd1_pipe", "sdxl_pipe"):
        if name in request.fixturenames:
            LoraStack.of(request.getfixturevalue(name)).activate([])
