"""End to end in a real headless Chromium (Debian's ``chromium`` driven by Playwright through
``executable_path``): create a dataset from generated images, edit a caption, rename a tag, open the bucket
preview, train on the shipped sdworld base (the loss chart updates, a sample appears), stop, resume, draw
the comparison grid and generate an image with the new LoRA. A screenshot of each page goes to ``$LORAKIT_UI_SHOTS`` (``docs/ui`` refreshes the
README's) or the test's temporary folder.

Skipped, saying why, where Chromium or Playwright is missing (``.ci/run`` installs both). Every wait has a
hard limit that fails the test with the UI's and the job's logs; the server and the jobs are killed after.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ui_helpers import ROOT, write_images

from lorakit.ui import processes
from lorakit.ui.jobs import JobStore, log_tail

CHROMIUM = os.environ.get("LORAKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = 300_000  # ms, per wait: a loaded 2-core CI box trains slowly
PROMPT = "a red sks ring on a blue background --w 32 --h 32 --d 1 --s 4 --l 3"

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright); "
                                 ".ci/run installs it")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it), so the browser "
                "test cannot run", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    ws, port = tmp_path / "ws", free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # its jobs too: no thread pools competing on the shared test machine
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorakit", "ui", str(ws), "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while "open http" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lorakit ui did not start:\n{log.read_text()}")
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", ws, log
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    store = JobStore(ws / ".lorakit/jobs.sqlite3")
    for job in store.active():  # no training left behind
        processes.signal_group(job["pid"], job["ident"], signal.SIGKILL)


def test_dataset_to_trained_lora_in_the_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, ws, ui_log = server
    shots = Path(os.environ.get("LORAKIT_UI_SHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    images = write_images(tmp_path / "upload", 6, size=(48, 32))
    for p in write_images(tmp_path / "portrait", 2, size=(24, 40), seed=9):  # a second aspect ratio: a second bucket
        for f in (p, p.with_suffix(".txt")):
            f.rename(tmp_path / "upload" / f"p{f.name}")
    files = sorted(str(p) for p in (tmp_path / "upload").iterdir())
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS,
                                                   headless=True, viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT)
        expect.set_options(timeout=TIMEOUT)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            run(page, expect, url, ws, files, images, shots)
        except Exception as exc:
            page.screenshot(path=str(shots / "failure.png"))
            store = JobStore(ws / ".lorakit/jobs.sqlite3")
            logs = "\n".join(f"--- job {j['id']} ({j['state']}):\n{log_tail(j['log'], 30)}" for j in store.all())
            raise AssertionError(f"{type(exc).__name__}: {exc}\n(screenshot {shots / 'failure.png'})\nUI log:\n"
                                 f"{log_tail(ui_log, 30)}\n{logs}") from exc
        finally:
            ctx.close()
    assert errors == [], errors


def pause_after_first_sample(ws: Path, timeout: float = 300) -> dict:
    """SIGSTOP the training once its step-2 sample and two loss rows are written; its job row."""
    store, deadline, run = JobStore(ws / ".lorakit/jobs.sqlite3"), time.monotonic() + timeout, ws / "runs/rings"

    def ready() -> bool:
        rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        return len([r for r in rows if '"lr"' in r]) >= 2 and any((run / "sample").glob("*_000002_*.png"))

    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"no step-2 sample and two metrics rows within {timeout:.0f} s")
        time.sleep(0.005)
    job = next(j for j in store.all() if j["kind"] == "train")
    processes.signal_group(job["pid"], job["ident"], signal.SIGSTOP)
    return job


def run(page, expect, url, ws, files, images, shots):
    def shot(name, top=False):
        page.wait_for_function("[...document.images].every(i => i.complete)")
        if top:
            page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / f"{name}.png"))

    # a dataset from generated images
    def submit(form, **values):
        for key, value in values.items():
            field = page.locator(f"{form} [name={key}]")
            if field.evaluate("el => el.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)
        page.click(f"{form} button")

    page.goto(f"{url}/datasets")
    submit("#new-dataset", name="rings", repeats="2", tokens="sks ring")
    page.wait_for_url(f"{url}/datasets/rings")
    page.click("button[data-open='#upload-box']")
    page.set_input_files("#upload input[type=file]", files)
    page.click("#upload button.primary")
    expect(page.locator("#upload-report")).to_contain_text("16 of 16 accepted")
    page.click("#upload-report a.button")
    expect(page.locator("figure.thumb")).to_have_count(8)
    # edit a caption (saved when the field loses focus)
    first = page.locator("figure.thumb").first
    first.locator("textarea").fill("sks ring, red, on a blue background")
    page.click("h1")
    expect(first.locator(".status")).to_have_text("saved")
    caption = ws / "datasets/rings/img/2_sks ring/0000.txt"
    assert caption.read_text() == "sks ring, red, on a blue background\n"
    shot("dataset")
    # rename a tag everywhere, previewed first
    page.goto(f"{url}/datasets/rings/tags")
    expect(page.locator("#tag-table")).to_contain_text("sks ring")
    submit("form.tag-op[data-op=rename]", tag="red", new="crimson")
    expect(page.locator("#preview .what")).to_have_text("rename tag 'red' to 'crimson'")
    shot("tags", top=True)
    page.click("#apply")
    page.wait_for_function("!document.querySelector('#preview') || document.querySelector('#preview').hidden")
    assert caption.read_text() == "sks ring, crimson, on a blue background\n"
    # a config from the sdworld preset on this dataset, small enough to train here
    page.goto(f"{url}/configs")
    submit("#new-config", name="rings", preset="sdworld", dataset="rings")
    page.wait_for_url(f"{url}/configs/rings")
    for key, value in (("train.max_steps", "12"), ("train.save_every_n_steps", "4"), ("train.save_every_n_epochs", ""),
                       ("sample.every_n_epochs", ""), ("sample.every_n_steps", "2"), ("train.batch_size", "2"),
                       ("sample.prompts", "configs/rings-prompts.txt"), ("network.conv_dim", ""), ("network.dim", "4")):
        field = page.locator(f"[name='{key}']")
        field.evaluate("el => el.closest('details').open = true")
        field.fill(value)
    page.locator("[name='sample.before_training']").uncheck()
    page.click("#save")
    expect(page.locator("#toast")).to_contain_text("saved")
    page.reload()
    page.fill("#prompts", PROMPT + "\n")
    page.click("#save-prompts")
    expect(page.locator("#toast")).to_contain_text("saved configs/rings-prompts.txt")
    page.click("#validate")
    expect(page.locator("#report")).to_contain_text("optimizer steps: 12 (train.max_steps)")
    assert page.locator("#problems").is_hidden()
    shot("config", top=True)
    # the bucket preview with this config's settings
    page.goto(f"{url}/datasets/rings/buckets?config=rings")
    expect(page.locator("#bucket-table")).to_contain_text("24x40")
    expect(page.locator(".crops .crop")).to_have_count(8)
    shot("buckets")
    # train: the loss chart updates and a sample appears
    page.goto(f"{url}/configs/rings")
    page.fill("#run-name", "rings")
    page.click("#launch")
    page.wait_for_url(f"{url}/jobs/*")
    # hold the training (SIGSTOP) once its step-2 sample exists, so that the stop button is pressed mid-run
    # however fast the machine trains (twelve steps can pass while the browser notices one sample)
    job = pause_after_first_sample(ws)
    page.wait_for_function("rows.filter(r => typeof r.lr === 'number').length >= 2")
    expect(page.locator("#samples img").first).to_be_visible()  # the sampling at step 2
    expect(page.locator("#state")).to_have_text("running")
    page.click("button[data-act=stop]")
    expect(page.locator("#toast")).to_contain_text("stopping at the next step")  # the request is on disk
    processes.signal_group(job["pid"], job["ident"], signal.SIGCONT)
    expect(page.locator("#state")).to_have_text("stopped")
    shot("job")
    stopped_at = int(sorted((ws / "runs/rings").glob("checkpoint-*"))[-1].name.split("-")[1])
    assert stopped_at < 12 and not (ws / "runs/rings/summary.json").exists()
    page.goto(f"{url}/jobs")
    shot("queue")
    page.goto(f"{url}/jobs/1")
    page.click("button[data-act=resume]")
    expect(page.locator("#state")).to_have_text("completed")
    expect(page.locator("#samples th")).to_have_count(1 + 6 + 1)  # samplings at steps 2, 4, ..., 12 and a row label
    shot("job-completed")
    assert "resumed from runs/rings/checkpoint" in (ws / "runs/rings/train.log").read_text()
    assert (ws / "runs/rings/sks_ring.safetensors").is_file()
    # the epoch x strength grid
    page.click("text=Compare epochs × strengths")
    page.fill("#grid-form input[name=strengths]", "0, 1")
    page.click("#grid-form button.primary")
    expect(page.locator("table.cells img").first).to_be_visible()
    n_files = page.locator("table.cells tr").count() - 1
    expect(page.locator("table.cells img")).to_have_count(2 * n_files)
    shot("compare")
    page.locator("table.cells img").last.click()
    expect(page.locator("#modal pre")).to_contain_text("Steps: 4")
    expect(page.locator("#modal h3")).to_contain_text("sks_ring · strength 1")
    shot("compare-cell")
    page.keyboard.press("Escape")
    # generate with the trained LoRA (A1111 syntax, a tag from the chips), saved with its infotext
    page.goto(f"{url}/generate")
    page.fill("#generate-form textarea[name=prompt]", "a red sks ring on a blue background")
    page.click("button[data-lora='sks_ring']")
    for key, value in (("steps", "4"), ("cfg", "3"), ("seed", "5"), ("width", "32"), ("height", "32")):
        page.fill(f"#generate-form [name={key}]", value)
    page.click("#generate-form button.primary")
    expect(page.locator("#gen-outputs img")).to_have_count(1)
    page.locator("#gen-outputs img").first.click()
    expect(page.locator("#modal pre")).to_contain_text("<lora:sks_ring:0.8>")
    expect(page.locator("#modal pre")).to_contain_text("Seed: 5")
    page.keyboard.press("Escape")
    shot("generate")
    page.goto(url)
    shot("home")
