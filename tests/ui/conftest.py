"""Fixtures of the web UI's tests: a workspace with a small kohya dataset and a TestClient on the guarded app."""

from __future__ import annotations

import pytest
from ui_helpers import HOST, write_images


@pytest.fixture
def ws_root(tmp_path):
    root = tmp_path / "ws"
    write_images(root / "datasets" / "d1" / "img" / "2_sks shape", 6)
    write_images(root / "datasets" / "d1" / "reg" / "1_shape", 3, seed=1)
    return root


@pytest.fixture
def app(ws_root):
    from lorakit.ui.app import create_app

    return create_app(ws_root, start_runner=False)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url=HOST) as c:
        yield c
