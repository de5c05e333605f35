import pytest
import sd_pipes


@pytest.fixture(scope="module")
def sd1_dir(tmp_path_factory):
    """(tiny SD1 pipeline directory, kohya dataset folder) shared by a test module."""
    root = tmp_path_factory.mktemp("sd1")
    return sd_pipes.save_pipeline(root / "model"), sd_pipes.save_dataset(root / "img")
