"""Shared helpers for lorakit benchmarks: thread pinning, rotated timing rounds, peak-RSS probes."""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import torch

# Memory probes run in child processes whose big tensors go straight to mmap, so freed memory leaves
# RSS at once and peak RSS per phase is honest. That setting makes every large temporary page-fault,
# which inflates step times and penalises implementations with more temporaries: never for timing.
EXACT_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
# Step timings choose how freed memory goes back to the OS (BENCH_HEAP, read at start-up, so the
# script re-runs itself under it). With glibc's default policy a step re-faults 0 to 65,000 pages
# (~4 µs each on this VM, 8,000 per 32 MB logits buffer) depending on the heap layout the previous
# steps left, for the floor, PEFT and lorakit alike: up to 15 % of a step, luck rather than the code
# under test. Every candidate in one process runs under the same policy:
#   steady   (the default) glibc keeps every freed block, so a warmed-up step faults no page;
#   thp      glibc's default, plus PyTorch's THP_MEM_ALLOC_ENABLE: buffers >= 2 MB on huge pages;
#   default  glibc's default policy.
HEAP_ENV = {"steady": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)},
            "thp": {"THP_MEM_ALLOC_ENABLE": "1"}, "default": {}}


def env_without_heap_policy() -> dict[str, str]:
    """This process's environment less every BENCH_HEAP setting (for child processes)."""
    keys = {k for env in HEAP_ENV.values() for k in env}
    return {k: v for k, v in os.environ.items() if k not in keys}


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """The optimizer of every benchmark: torch's fused AdamW, the default of lorakit's trainer and of
    transformers' Trainer (torch >= 2.8), so each step times what users run."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def setup(threads: int = 2, seed: int = 0, heap: bool = False) -> None:
    """Pin threads and the seed; with ``heap`` re-run this script under the BENCH_HEAP policy."""
    if heap:
        mode = os.environ.setdefault("BENCH_HEAP", "steady")
        if mode not in HEAP_ENV:
            raise SystemExit(f"BENCH_HEAP={mode!r}: expected one of {sorted(HEAP_ENV)}")
        env = env_without_heap_policy() | HEAP_ENV[mode]
        if env != dict(os.environ):
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident memory above the level at entry (Linux: resets VmHWM via clear_refs)."""

    def __enter__(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.start = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = _status("VmHWM") - self.start


def run_exact_rss(script: str, *args: str) -> str:
    """Last stdout line of ``script ARGS`` run in a fresh interpreter with ``EXACT_RSS_ENV`` (each
    candidate starts from a clean heap; fork would deadlock torch's OpenMP pool)."""
    import subprocess

    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True,
                         env=env_without_heap_policy() | EXACT_RSS_ENV)
    return out.stdout.strip().splitlines()[-1]


def training_peaks(marks: dict, base: int):
    """A lorakit callback that writes into ``marks``, above ``base`` (the RSS once the runtime is imported):
    ``load``, the peak until training begins, and ``train``, the peak from the first step on (VmHWM is reset
    to VmRSS when training begins, after the heap is trimmed)."""
    import ctypes

    from lorakit.train import Callback

    libc = ctypes.CDLL("libc.so.6")

    class Peaks(Callback):
        def on_train_begin(self, state):
            marks["load"] = _status("VmHWM") - base
            libc.malloc_trim(0)
            marks["begin"] = _status("VmRSS") - base
            marks["file"], marks["anon"] = _status("RssFile"), _status("RssAnon")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS: the training peak starts here

        def on_train_end(self, state):
            marks["train"] = _status("VmHWM") - base

    return Peaks()


def peak_in_subprocess(script: str, *args: str) -> int:
    """Peak RSS growth (bytes) reported by ``script --peak-of ARGS`` (see ``run_exact_rss``)."""
    return int(run_exact_rss(script, "--peak-of", *args))


def median_ms(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def rotated(candidates: dict, rounds: int, steps: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(median over rounds of each candidate's per-round median step in ms, those per-round medians);
    the order of candidates rotates every round."""
    names = list(candidates)
    per = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            per[n].append(median_ms(candidates[n], steps))
    return {n: statistics.median(v) for n, v in per.items()}, per


def rotated_loads(impls: dict[str, tuple], target, path, rounds: int) -> dict[str, list[float]]:
    """Seconds of each ``load(target, path)`` per round, each followed by an untimed ``unload(target)``
    (``impls``: name -> (load, unload)); the order rotates every round; round 0 (imports, caches) is not kept."""
    names = list(impls)
    times = {n: [] for n in names}
    for r in range(rounds + 1):
        for n in names[r % len(names):] + names[: r % len(names)]:
            load, unload = impls[n]
            t = time.perf_counter()
            load(target, path)
            elapsed = time.perf_counter() - t
            unload(target)
            if r:
                times[n].append(elapsed)
    return times


def step_benchmark_args(candidates):
    """(args, device) of a training-step benchmark (--rounds, --steps, --device); in ``--peak-of NAME`` child
    mode it prints the peak memory of ``candidates(device)[0][NAME]`` (``peak_memory``) and returns None."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peak-of")
    a = ap.parse_args()
    setup(heap=a.peak_of is None and a.device == "cpu")
    device = torch.device(a.device)
    if a.peak_of:
        print(peak_memory(candidates(device)[0][a.peak_of], device))
        return None
    return a, device


def timed_rounds(steps: dict, device, rounds: int, n: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``rotated`` over training-step callables, each synchronised on CUDA and warmed up once first."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    timed = {k: (lambda f=f: (f(), sync())) for k, f in steps.items()}
    for f in timed.values():
        f()
    return rotated(timed, rounds, n)


def peak_memory(step, device) -> int:
    """Peak memory (bytes) of three calls of ``step`` after a warm-up call (optimizer state allocated):
    CUDA's allocator peak on a GPU, else the growth of peak RSS."""
    step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with PeakRSS() as peak:
        for _ in range(3):
            step()
    return peak.peak


def candidate_peaks(script: str, candidates, device, names=("lorakit", "peft")) -> dict[str, int]:
    """Peak memory per candidate: CUDA's allocator peak in this process, else peak RSS growth in a fresh
    process each (``script --peak-of NAME``)."""
    if torch.device(device).type == "cuda":
        return {n: peak_memory(candidates(device)[0][n], device) for n in names}
    return {n: peak_in_subprocess(script, n) for n in names}


def header(rounds: int, steps: int, rank: int | None = None, extra: str = "") -> str:
    """The first line every benchmark prints: versions, threads, rank and how it was timed."""
    import importlib.util

    peft = ""
    if importlib.util.find_spec("peft") is not None:
        import peft as peft_module

        peft = f", peft {peft_module.__version__}"
    r = "" if rank is None else f", r={rank}"
    heap = f", {os.environ['BENCH_HEAP']} heap" if "BENCH_HEAP" in os.environ else ""
    return (f"torch {torch.__version__}{peft}, threads {torch.get_num_threads()}{r}{heap}, "
            f"{rounds} rotated rounds x {steps} steps{extra}")


def paired(per: dict[str, list[float]], a: str, b: str) -> str:
    """The per-round ratios a/b as "median (q25–q75)": adjacent steps share the machine's state, so
    this is steadier than a ratio of medians when the machine drifts."""
    ratios = [x / y for x, y in zip(per[a], per[b], strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return f"{statistics.median(ratios):.3f} ({q[0]:.3f}–{q[2]:.3f})"


def saved_bytes(fn, model) -> int:
    """Activation bytes autograd keeps for backward during ``fn()``: distinct storages, not counting
    ``model``'s parameters (resident anyway)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
