"""train/heap.py: keep_heap stops glibc from page-faulting freed blocks back in; run() applies it on CPU."""

import importlib
import os
import platform
import subprocess
import sys
import textwrap

from test_run import llama_cfg

run_module = importlib.import_module("lorakit.train.run")  # the package re-exports run()

# One process per setting: the heap policy is process-wide and lasting.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from lorakit.train.heap import keep_heap
    applied = keep_heap() if sys.argv[1] == "kept" else None

    def cycle():  # allocate, touch and free 64 MiB (above glibc's largest mmap threshold)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(16 * 2**20)
        t.fill_(1.0)
        del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(3):  # warm-up: a kept heap needs a few cycles to hold a free block that fits
        cycle()
    print(applied, sum(cycle() for _ in range(4)))
""")


def _probe(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_MEM"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env,
                         timeout=300)  # a hung child is killed and fails the test
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_keep_heap_stops_refaulting_a_freed_block():
    applied, kept = _probe("kept")
    _, default = _probe("default")
    if platform.libc_ver()[0] != "glibc":
        assert applied == "False"
        return
    assert applied == "True"
    # glibc's default maps the 64 MiB afresh each cycle (16,384 pages of 4 KiB); kept, it reuses a block
    assert kept * 10 < default and kept < 1000, (kept, default)


def test_run_keeps_the_heap_on_cpu_unless_told_not_to(tmp_path, llama_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_module, "keep_heap", lambda: calls.append(1) or True)
    run_module.run(llama_cfg(tmp_path / "on", llama_path, max_steps=1), quiet=True)
    assert calls == [1]
    run_module.run(llama_cfg(tmp_path / "off", llama_path, max_steps=1, keep_heap=False), quiet=True)
    assert calls == [1]
