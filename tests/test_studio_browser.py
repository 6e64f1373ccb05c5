"""sdlora studio end to end in a real browser: Playwright driving Debian's chromium against a studio server
(``sdlora studio``) started here on a free port, over a root with the demo dataset and the quickstart preset
on the embedded default model. Skip locally with ``-m "not browser"``.

Screenshots of each page go to the test's temporary folder; with SDLORA_STUDIO_SCREENSHOTS=DIR (e.g. docs)
they are written there as studio-<page>.png.
"""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request

import pytest
import torch

from sdlora.files.tensors import read_tensors
from studiokit import make_root, wait_for

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ADAPTER = "runs/quickstart/quickstart.safetensors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("studio") / "root", steps=30)
    port = _free_port()
    # one torch thread in the server's jobs, as conftest.py sets for the tests: OpenMP threads spinning
    # against the other processes on a shared 2-core machine make a step many times slower
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "sdlora.cli", "studio", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}/"

    def up():
        try:
            return urllib.request.urlopen(base + "api/health", timeout=2).status == 200
        except OSError:
            return proc.poll() is not None  # exited: reported below
    wait_for(up, 60)
    assert proc.poll() is None, proc.stdout.read()
    yield base, root
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors, errors  # no script error on any page


def _shot(page, name: str, tmp_path: pathlib.Path) -> None:
    folder = pathlib.Path(os.environ.get("SDLORA_STUDIO_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"studio-{name}.png"))


def _train(page, base: str, out_dir: str | None = None, steps: int | None = None) -> str:
    """Queue the quickstart preset (optionally into another output.dir, for another number of steps) from the
    Train page; returns the job id."""
    page.goto(base + "#/train")
    page.locator('[data-key="training.max_steps"]').wait_for()
    _until(page, "document.querySelector('[data-key=\"training.max_steps\"]').value === '30'")
    if out_dir:
        page.fill('[data-key="output.dir"]', out_dir)
    if steps:
        page.fill('[data-key="training.max_steps"]', str(steps))
    page.click("#queue")
    page.wait_for_url("**#/jobs/*")
    return page.url.rsplit("/", 1)[1]


def _until(page, predicate: str, timeout: float = 30_000) -> None:
    """Wait for a JS predicate, checked every 200 ms (the default, every animation frame, keeps headless
    chromium rendering frames on a CPU the training needs)."""
    page.wait_for_function(predicate, timeout=timeout, polling=200)


def test_dataset_page_shows_the_demo_and_saves_a_caption(page, server, tmp_path):
    base, root = server
    page.goto(base + "#/datasets/datasets%2Fdemo")
    _until(page, "document.querySelectorAll('#images .tile img').length === 20")
    _until(page, "[...document.querySelectorAll('#images .tile img')].every(i => i.complete && i.naturalWidth > 0)")
    box = page.locator('textarea[data-path="datasets/demo/00_blue_gray.png"]')
    box.fill("a blue sks star, edited in the studio")
    box.press("Tab")  # change -> PUT /api/datasets/caption
    txt = root / "datasets/demo/00_blue_gray.txt"
    wait_for(lambda: txt.read_text() == "a blue sks star, edited in the studio\n", 10)
    page.click("#scan")
    page.wait_for_selector("#buckets td")
    assert "32×32" in page.inner_text("#buckets") and "20" in page.inner_text("#buckets")
    _shot(page, "datasets", tmp_path)


def test_training_shows_live_loss_and_a_sample_then_its_adapter(page, server, tmp_path):
    base, root = server
    page.goto(base + "#/train")
    _until(page, "document.querySelector('[data-key=\"training.max_steps\"]')?.value === '30'")
    _shot(page, "train", tmp_path)
    _train(page, base)
    # live: loss points arrive while the job is still running
    _until(page, "Number(document.getElementById('chart')?.dataset.points || 0) > 0 && "
                           "document.getElementById('job-status')?.dataset.status === 'running'", timeout=300_000)
    _until(page, "document.getElementById('job-status')?.dataset.status === 'done'", timeout=480_000)
    page.wait_for_selector("#samples img.sample")
    assert int(page.locator("#chart").get_attribute("data-points")) == 30
    assert page.inner_text('[data-stat="step"]') == "30 / 30"
    _until(page, "[...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth > 0)")
    _shot(page, "jobs", tmp_path)
    assert (root / ADAPTER).is_file()
    page.goto(base + "#/adapters")
    card = page.locator(f'.adapter[data-path="{ADAPTER}"]')
    card.wait_for()
    assert "lora" in card.inner_text() and "sks" in card.inner_text()
    assert card.locator(".thumbs img").count() >= 1
    _shot(page, "adapters", tmp_path)


def test_generating_with_the_adapter_at_0_8_shows_its_parameters(page, server, tmp_path):
    base, root = server
    page.goto(base + f"#/generate?lora={ADAPTER}")
    page.wait_for_selector(".stack-row")
    assert page.input_value(".lora-strength") == "0.8"
    page.fill("#steps", "8")
    page.click("#generate")
    page.wait_for_selector("#results img.generated", timeout=300_000)
    params = page.inner_text("#results .result pre")
    assert "<lora:quickstart:0.8>" in params and "Steps: 8" in params and "Lora hashes" in params
    shown = page.inner_text("#results .result .muted").split(" · ")[0]
    assert (root / shown).is_file()
    _shot(page, "generate", tmp_path)


def test_stop_then_resume_gives_the_uninterrupted_adapter_bit_for_bit(page, server, tmp_path):
    base, root = server
    # long enough that sample-now -> save-now -> stop all land before the end (30 steps take ~1.5 s now)
    steps = 400
    _train(page, base, out_dir="runs/resumed", steps=steps)
    _until(page, "parseInt(document.querySelector('[data-stat=\"step\"]')?.textContent) >= 3", timeout=300_000)
    page.click("#sample-now")  # samples are drawn off the training's RNG: the run stays bit-identical
    _until(page, "document.querySelectorAll('#samples img.sample').length > 0", timeout=180_000)
    page.click("#save-now")
    _until(page, "document.getElementById('log')?.textContent.includes('[saved ')", timeout=180_000)
    page.click("#stop")
    _until(page, "document.getElementById('job-status')?.dataset.status === 'stopped'", timeout=180_000)
    step = int(page.inner_text('[data-stat="step"]').split("/")[0])
    assert 3 <= step < steps
    assert any((root / "runs/resumed").glob("state-*/trainer.json"))
    assert len(list((root / "runs/resumed/samples").glob("*.png"))) >= 1
    _until(page, "document.getElementById('resume')?.disabled === false")
    page.click("#resume")
    _until(page, "document.getElementById('job-status')?.dataset.status === 'done'", timeout=480_000)
    assert page.inner_text('[data-stat="step"]') == f"{steps} / {steps}"
    # the reference: the job's own saved config, trained uninterrupted by `sdlora train` into another folder
    configs = [c for c in (root / ".sdlora-studio/configs").glob("*.toml")
               if tomllib.loads(c.read_text())["output"]["dir"].endswith("runs/resumed")]
    assert len(configs) == 1, configs
    reference = root / "runs/reference"
    done = subprocess.run([sys.executable, "-m", "sdlora.cli", "train", str(configs[0]),
                           "--set", f"output.dir={reference}"], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    a, _ = read_tensors(reference / "quickstart.safetensors")
    b, _ = read_tensors(root / "runs/resumed/quickstart.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_traversal_path_is_refused(page, server, tmp_path):
    base, _ = server
    resp = page.goto(base + "api/datasets/images?path=../../etc")
    assert resp.status == 403 and "refused" in resp.json()["error"]
    page.goto(base + "#/datasets/..%2F..%2Fetc")
    page.wait_for_selector("#banner:not([hidden])")
    assert "'..' is refused" in page.inner_text("#banner")
    page.goto(base + "#/tools/merge")
    page.wait_for_selector("#run-tool")
    _shot(page, "tools", tmp_path)
