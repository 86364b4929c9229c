"""End to end in a real browser: JupyterLab on 127.0.0.1, the explorer notebook opened in headless
Chromium (Debian's ``chromium``, driven by Playwright; no browser download) at 1366x768 on the
trained ToyWorld model, run; the first map announced as the reference pass; a slider moved with
the keyboard, a busy indication seen before the new heat map; lambda typed exactly, "Segment"
pressed, its denoising steps counted while the button is disabled, and the scored segmentation,
the colour bar and the class legend seen, all within the screen.

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


# Records, in the page and in order, every change of the explorer's status lines (the text each
# change put there), of the difference map's picture and stale mark and of the Segment button's
# disabled state, so that the test can tell what was shown *before* a new map arrived however
# slowly the browser renders.
RECORDER = """() => {
  window.edlLog = [];
  const push = (what, value) => window.edlLog.push({what, value});
  new MutationObserver(records => { for (const m of records) {
    const t = m.target.nodeType === 1 ? m.target : m.target.parentElement;
    if (!t) continue;
    if (m.type === 'attributes') {
      if (t.matches('img.edl-diff') && m.attributeName === 'src') push('src', t.src);
      if (t.matches('img.edl-diff') && m.attributeName === 'class')
        push('stale', t.classList.contains('edl-stale'));
      if (t.closest('.edl-segment') && m.attributeName === 'disabled')
        push('disabled', t.closest('.edl-segment').disabled);
      continue;
    }
    const text = [...m.addedNodes].map(n => n.textContent).join('');
    if (t.closest('.edl-status')) push('status', text);
    if (t.closest('.edl-seg-status')) push('seg', text);
  }}).observe(document.body, {subtree: true, childList: true, characterData: true,
      attributes: true, attributeFilter: ['src', 'class', 'disabled']});
}"""


def test_explorer_on_toyworld_busy_progress_scale_and_legend(chromium, jupyterlab):
    """On a 1366x768 screen: the explorer fits without scrolling to the Segment result; a click
    shows a busy indication before the new map; Segment counts its denoising steps while its
    button is disabled; the colour bar and the class legend are shown."""
    from playwright.sync_api import sync_playwright

    url, root = jupyterlab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}")
            page.wait_for_selector(".jp-Notebook", state="visible")
            _accept_kernel_dialog(page)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel")
            page.evaluate(RECORDER)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.locator(".edl-explorer").wait_for(state="visible", timeout=240_000)
            # The notebook's last cell (the snapshot) has run once its output is there.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                ".some(e => e.innerText.includes('explorer.png'))", timeout=400_000)
            first_log = page.evaluate(
                "() => window.edlLog.filter(e => e.what === 'status').map(e => e.value)")
            explorer = page.locator(".edl-explorer")
            explorer.evaluate("e => e.scrollIntoView({block: 'start'})")
            box = explorer.bounding_box()
            overlay = page.locator(".edl-overlay .widget-label-basic")
            label_whole = overlay.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
            label_text = overlay.inner_text()

            # One region: a cell never computed, by the row slider.
            page.locator(".edl-explorer .lm-TabBar-tab", has_text="one region").click()
            heat = page.locator("img.edl-diff")
            heat.wait_for(state="visible")
            page.wait_for_timeout(300)
            src_before = heat.get_attribute("src")
            pixels_before = heat.screenshot()
            colorbar = page.locator(".edl-colorbar").inner_text()
            page.evaluate("() => { window.edlLog = []; }")
            page.locator(".edl-row .noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "(before) => document.querySelector('img.edl-diff').src !== before"
                " && !document.querySelector('img.edl-diff.edl-stale')",
                arg=src_before, timeout=240_000)
            page.wait_for_timeout(500)
            cell_log = page.evaluate("() => window.edlLog")
            pixels_after = heat.screenshot()
            status = page.locator(".edl-status").inner_text()

            # Segment at an exact typed lambda (a setting never segmented).
            page.locator(".edl-strength input").fill("50")
            page.locator(".edl-strength input").press("Enter")
            page.wait_for_function(
                "() => document.querySelector('.edl-status').innerText.includes('max change')"
                " && !document.querySelector('img.edl-diff.edl-stale')", timeout=240_000)
            page.evaluate("() => { window.edlLog = []; }")
            page.locator(".edl-segment").click()
            page.wait_for_function(
                "() => { const s = document.querySelector('.edl-seg-status').innerText; "
                "return s.includes('mIoU') && s.includes('computed in'); }", timeout=400_000)
            segment_log = page.evaluate("() => window.edlLog")
            seg_text = page.locator(".edl-seg-status").inner_text()
            legend = page.locator(".edl-class-legend").inner_text()
            segmented = page.locator("img.edl-seg-emerdiff")
            explorer.evaluate("e => e.scrollIntoView({block: 'start'})")
            seg_box = segmented.bounding_box()
            segmented_png = segmented.screenshot()
            truth_png = page.locator("img.edl-seg-truth").screenshot()
        finally:
            browser.close()
    assert any("reference pass" in s for s in first_log), "no busy sign before the first map"
    assert box["height"] <= 700 and box["width"] <= 1366, f"the explorer is {box}"
    assert label_whole and "map over the image" in label_text
    assert "largest change" in colorbar and "shared scale" in colorbar
    # Busy before new: "computing" (or the dimmed picture) comes before the new map's picture.
    first_src = next(i for i, e in enumerate(cell_log) if e["what"] == "src")
    busy = [e for e in cell_log[:first_src] if (e["what"] == "status" and "computing" in
                                                 e["value"]) or e == {"what": "stale",
                                                                      "value": True}]
    assert busy, f"no busy indication before the new map: {cell_log[:12]}"
    assert pixels_after != pixels_before, "the heat map looks the same after the slider moved"
    assert "region: 1 cell(s)" in status and "toyworld" in status
    assert "RANDOM WEIGHTS" not in status
    # Segment: disabled, then its denoising steps counted, then enabled again with the result.
    events = [(e["what"], e["value"]) for e in segment_log]
    disabled_at = events.index(("disabled", True))
    steps = [i for i, (what, value) in enumerate(events)
             if what == "seg" and "denoising steps" in value]
    enabled_at = max(i for i, e in enumerate(events) if e == ("disabled", False))
    assert steps and disabled_at < steps[0] and steps[-1] < enabled_at, events[:20]
    assert "lambda=50," in seg_text and "EmerDiff" in seg_text and "naive" in seg_text
    assert "sky" in legend, f"no class legend: {legend!r}"
    assert seg_box["y"] + seg_box["height"] <= 768 + 1, "the Segment result is below the fold"
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
