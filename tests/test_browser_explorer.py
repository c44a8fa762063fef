"""A real browser on a live explorer: Debian's chromium driven by playwright.

Every page is loaded from a live ``streamlit run`` (started by ``imsim-lab explore``'s own
function), checked for the absence of an exception element, and saved as a full-page screenshot
under ``test-output/browser/``. The results are the demo's tiny runs plus a matching-track run made
from them (``support.make_matching_run``), so the cost page, the pair view and the audit have
something to show. Also: a click on a heatmap cell opens its examples, a shared link restores the
filters, a bad upload shows its error, the heatmap greys out wide intervals. Skipped (with the reason) without chromium;
CI installs it with apt (``.ci/run``).
"""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
OUT = Path(__file__).resolve().parents[1] / "test-output" / "browser"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
PAGES = {"leaderboard": "", "families": "families", "failures": "failures", "compare": "compare",
         "browser": "browser", "submit": "submit", "adversarial": "adversarial", "costs": "costs",
         "pairs": "pairs", "audit": "audit"}
READY = '[data-testid="stApp"][data-test-script-state="notRunning"]'


@pytest.fixture(scope="module")
def server(demo_results, tmp_path_factory):
    from imsim_lab.cli.explore_cmd import free_port, start_server
    from support import make_matching_run

    demo, _ = demo_results
    runs = tmp_path_factory.mktemp("browser") / "runs"
    for m in ("pdq", "sscd", "sscd+sn"):
        shutil.copytree(demo / m, runs / m, symlinks=True)
    make_matching_run(runs / "sscd", runs / "sift_verify")
    proc, url = start_server(runs, free_port(8650), timeout=90, quiet=True)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except Exception:  # noqa: BLE001
        proc.kill()


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; CI does it in .ci/run)")
    pw_api = pytest.importorskip("playwright.sync_api")
    OUT.mkdir(parents=True, exist_ok=True)
    with pw_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


def settle(pg, selector=None, timeout=90_000):
    pg.wait_for_selector(READY, timeout=timeout)
    if selector:
        pg.wait_for_selector(selector, timeout=timeout)
    pg.wait_for_timeout(500)
    pg.wait_for_selector(READY, timeout=timeout)


def no_exception(pg, name):
    assert pg.locator('[data-testid="stException"]').count() == 0, f"exception on {name}"


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_loads(page, server, name):
    wait_for = {"leaderboard": '[data-testid="stPlotlyChart"] .main-svg',
                "families": '[data-testid="stPlotlyChart"] .main-svg',
                "failures": '[data-testid="stImage"] img', "compare": '[data-testid="stPlotlyChart"] .main-svg',
                "browser": '[data-testid="stImage"] img', "submit": '[data-testid="stFileUploader"]',
                "adversarial": '[data-testid="stMain"] h1', "costs": '[data-testid="stPlotlyChart"] .main-svg',
                "pairs": '[data-testid="stImage"] img', "audit": '[data-testid="stImage"] img'}[name]
    page.goto(f"{server}/{PAGES[name]}")
    settle(page, wait_for)
    no_exception(page, name)
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def test_heatmap_click_opens_the_cell(page, server):
    page.goto(f"{server}/families")
    settle(page, '[data-testid="stPlotlyChart"] .scatterlayer .point')
    points = page.locator('[data-testid="stPlotlyChart"]').first.locator(".scatterlayer .point")
    page.screenshot(path=str(OUT / "families-before-click.png"), full_page=True)
    n = points.count()
    assert n > 3
    target = points.nth(n - 1)  # last cell: the last run, the last family
    target.click(force=True)
    page.wait_for_timeout(800)
    settle(page)
    no_exception(page, "families after a click")
    url = page.url
    assert "cell_family=" in url or "cell_run=" in url, url
    page.screenshot(path=str(OUT / "families-clicked.png"), full_page=True)


def test_pair_view_draws_the_matches(page, server):
    page.goto(f"{server}/pairs?ptrue=true")
    settle(page, '[data-testid="stImage"] img')
    no_exception(page, "pair view")
    body = page.inner_text("body")
    assert "candidate rank" in body and "sift matches" in body and "Classifier score per query view" in body
    page.screenshot(path=str(OUT / "pairs.png"), full_page=True)


def test_heatmap_greys_wide_intervals(page, server):
    page.goto(f"{server}/families?fwidth=0.1")
    settle(page, '[data-testid="stPlotlyChart"] .main-svg')
    no_exception(page, "families, narrow width limit")
    assert "(" in page.locator('[data-testid="stPlotlyChart"]').first.inner_text()  # greyed values in parentheses
    page.screenshot(path=str(OUT / "families-greyed.png"), full_page=True)


def test_shared_link_restores_filters(page, server):
    page.goto(f"{server}/failures?run=sscd&protocol=drivendata&view=Confident+false+positives")
    settle(page, '[data-testid="stDataFrame"]')
    no_exception(page, "failures with filters")
    body = page.inner_text("body")
    assert "Wrong top predictions" in body
    page.screenshot(path=str(OUT / "failures-shared-link.png"), full_page=True)


def test_bad_upload_shows_the_error(page, server, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("query_id,reference_id,score\nQ00000,R000000,not-a-number\n")
    page.goto(f"{server}/submit")
    settle(page, '[data-testid="stFileUploader"]')
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(bad))
    try:
        page.get_by_text("cannot be evaluated").wait_for(timeout=120_000)
    finally:
        page.screenshot(path=str(OUT / "submit-bad-file.png"), full_page=True)
    settle(page)
    text = page.inner_text("body")
    assert "cannot be evaluated" in text and "non-numeric score" in text and "row 2" in text
    no_exception(page, "submit with a bad file")
