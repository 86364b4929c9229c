"""End to end in a real browser: JupyterLab on 127.0.0.1, the explorer notebook opened in headless
Chromium (Debian's ``chromium``, driven by Playwright; no browser download) on the trained
ToyWorld model, run, a slider moved with the keyboard and the heat map seen to change, then
"Segment" pressed and the segmentation panel seen to show the new setting's scored segmentation.

Needs ``apt-get install chromium`` and the ``playwright`` Python package; skipped without them.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_explorer.ipynb"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    return path


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab serving a folder with the explorer notebook set to quick mode on ToyWorld;
    yields its URL."""
    root = tmp_path_factory.mktemp("lab")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += (f'\nmodel = "toyworld"\nquick = True\nout_dir = "{root / "figures"}"'
                      f'\ndevice = "cpu"\n')
    nbformat.write(nb, root / NOTEBOOK.name)
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"))
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 - closed in the teardown
    # CI containers often run as root, which JupyterLab refuses without --allow-root.
    root_flag = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", *root_flag,
         "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.workspaces_dir={root / '.workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n"
                                       + (root / "jupyterlab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url, root
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """Stops the server we started and its kernels (its own process group)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


def test_explorer_on_toyworld_slider_and_segment(chromium, jupyterlab):
    from playwright.sync_api import sync_playwright

    url, root = jupyterlab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}")
            page.wait_for_selector(".jp-Notebook", state="visible")
            _accept_kernel_dialog(page)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            heat = page.locator("img.edl-diff")
            heat.wait_for(state="visible", timeout=240_000)
            page.wait_for_function(
                "() => { const s = document.querySelector('.edl-status'); "
                "return s && s.innerText.includes('cache'); }", timeout=240_000)
            # The notebook's last cell (the snapshot) has run once its output is there.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                ".some(e => e.innerText.includes('explorer.png'))", timeout=240_000)
            first_status = page.locator(".edl-status").inner_text()
            heat.scroll_into_view_if_needed()
            src_before = heat.get_attribute("src")
            pixels_before = heat.screenshot()

            handle = page.locator(".edl-row .noUi-handle")
            handle.focus()
            page.keyboard.press("ArrowRight")  # row h//2 -> h//2 + 1: a cell never computed
            page.wait_for_function(
                "(before) => document.querySelector('img.edl-diff').src !== before",
                arg=src_before, timeout=120_000)
            page.wait_for_function(
                "() => document.querySelector('.edl-status').innerText.includes('computed')",
                timeout=120_000)
            page.wait_for_timeout(500)
            pixels_after = heat.screenshot()
            status = page.locator(".edl-status").inner_text()

            # The notebook segmented the starting setting; the moved slider does not change
            # the setting's key (the region is not part of it), so change lambda, which does:
            # the panel must say it is out of date until Segment is pressed.
            seg_status = page.locator(".edl-seg-status")
            page.locator(".edl-strength .noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "() => document.querySelector('.edl-seg-status').innerText"
                ".includes('out of date')", timeout=120_000)
            page.locator(".edl-segment").click()
            page.wait_for_function(
                "() => { const s = document.querySelector('.edl-seg-status').innerText; "
                "return s.includes('mIoU') && s.includes('computed in'); }", timeout=240_000)
            segmented = page.locator("img.edl-seg-emerdiff")
            segmented.scroll_into_view_if_needed()
            panel_visible = page.locator(".edl-segmentation").is_visible()
            seg_text = seg_status.inner_text()
            segmented_png = segmented.screenshot()
            truth_png = page.locator("img.edl-seg-truth").screenshot()
        finally:
            browser.close()
    assert "toyworld" in first_status and "RANDOM WEIGHTS" not in first_status
    assert pixels_after != pixels_before, "the heat map looks the same after the slider moved"
    assert "region: 1 cell(s)" in status
    assert panel_visible and "EmerDiff" in seg_text and "naive" in seg_text
    assert segmented_png != truth_png
    assert (root / "figures" / "explorer.png").is_file()


def _accept_kernel_dialog(page) -> None:
    """JupyterLab may ask which kernel to start; accept its proposal (the notebook's python3)."""
    try:
        dialog = page.wait_for_selector(".jp-Dialog", timeout=15_000)
    except Exception:  # noqa: BLE001 - no dialog is the usual case when the kernel is known
        return
    if dialog is not None:
        page.locator(".jp-Dialog .jp-mod-accept").first.click()
