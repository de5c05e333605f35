"""The adapter registry alone: LRU residency, pinning, busy adapters, names and paths confined to DIR."""

from __future__ import annotations

import pytest

import lorakit
from lorakit.serve.registry import AdapterError, Registry


@pytest.fixture
def model(serve_dirs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(serve_dirs[0])


def test_lru_pinning_and_busy_adapters(model, serve_dirs):
    reg = Registry(model, serve_dirs[1], max_loaded=2, pinned=["alpha"])
    assert list(reg.loaded) == ["alpha"] and lorakit.adapter_names(model) == ["alpha"]
    reg.acquire("beta")  # busy from now on
    assert not reg.can_acquire("gamma")
    with pytest.raises(AdapterError, match="all 2 adapter slots are pinned or busy") as e:
        reg.acquire("gamma")
    assert e.value.status == 503
    reg.release("beta")
    reg.acquire("gamma")  # evicts beta (idle, unpinned), never alpha
    assert set(reg.loaded) == {"alpha", "gamma"} and set(lorakit.adapter_names(model)) == {"alpha", "gamma"}
    with pytest.raises(AdapterError, match="serving 1 request") as e:
        reg.unregister("gamma")
    assert e.value.status == 409


@pytest.mark.parametrize("name", ["../alpha", "a/b", "/etc", "..", "x.y", ""])
def test_bad_names_refused(model, serve_dirs, name):
    reg = Registry(model, serve_dirs[1], max_loaded=2)
    with pytest.raises(AdapterError, match="invalid adapter name"):
        reg.acquire(name)


def test_paths_outside_dir_refused(model, serve_dirs, tmp_path):
    reg = Registry(model, serve_dirs[1], max_loaded=2)
    for path in ("..", str(tmp_path), "alpha/../../"):
        with pytest.raises(AdapterError, match="outside the adapter directory"):
            reg.register("x", path)
    with pytest.raises(AdapterError, match="unknown model 'nope'; available: \\['base', 'alpha', 'beta', 'gamma'\\]"):
        reg.acquire("nope")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    link = serve_dirs[1] / "sneaky"
    link.symlink_to(outside)
    try:  # a symlink in DIR that leads out of it is not an adapter
        assert "sneaky" not in reg.available()
        with pytest.raises(AdapterError, match="unknown model 'sneaky'"):
            reg.acquire("sneaky")
    finally:
        link.unlink()
    assert lorakit.adapter_names(model) == []
