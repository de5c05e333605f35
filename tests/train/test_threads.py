"""The CPU thread share under torchrun: cores / local world size unless the user chose."""

import torch

from lorakit.train.threads import share_cpu_threads, thread_share


def test_share_is_cores_over_local_processes():
    assert thread_share({"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "1"}, 16) == 4  # torchrun's default 1
    assert thread_share({"LOCAL_WORLD_SIZE": "3"}, 16) == 5
    assert thread_share({"LOCAL_WORLD_SIZE": "32"}, 16) == 1


def test_the_users_choice_wins():
    assert thread_share({"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "2"}, 16) is None
    assert thread_share({"LOCAL_WORLD_SIZE": "4", "LORAKIT_NUM_THREADS": "7"}, 16) == 7
    assert thread_share({}, 16) is None  # one process: torch's own default


def test_applied_to_torch_on_cpu_only(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("LORAKIT_NUM_THREADS", "1")
    try:
        assert share_cpu_threads("cuda") is None and torch.get_num_threads() == before
        assert share_cpu_threads("cpu") == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
