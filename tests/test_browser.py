"""What a researcher sees, checked in a real browser: headless Chromium with a fresh profile
on `study.ui`'s server over a small smoke store, and on the report's HTML.

- the link print_links prints opens the runs table (not MLflow's GenAI overview), every
  run in view with a test-loss column and no Assistant panel;
- a run's artifact view renders the trace page;
- the report's HTML loads with every image decoded.

Needs Chromium (`apt install chromium`, at /usr/bin/chromium) and Playwright
(`pip install playwright==1.65.0`; it uses that Chromium, it downloads nothing). Without
them the test skips, saying what to install, unless STUDY_REQUIRE_BROWSER=1, where it
fails. STUDY_SCREENSHOTS=DIR saves screenshots of the runs table, a run's charts, the
trace in the artifact view and the report into DIR (docs/screenshots/ in the repo).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SMOKE

REQUIRED = os.environ.get("STUDY_REQUIRE_BROWSER") == "1"
SHOTS = os.environ.get("STUDY_SCREENSHOTS")
CHROMIUM = os.environ.get("STUDY_CHROMIUM", "/usr/bin/chromium")
TRACE_PAGE = "probes/traces.html"  # the single self-contained trace page of every run
TEST_LOSS = "loss/test_nats_per_char"
VIEWPORT = {"width": 1600, "height": 900}


def _missing() -> str | None:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        return f"no Chromium at {CHROMIUM} (apt install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright (pip install playwright==1.65.0)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if REQUIRED:
            pytest.fail(f"STUDY_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(f"browser test: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two smoke runs (lstm and gru on Linux, the parent besides) and their report."""
    from analyses import report
    from study import run
    from study.config import TrackingConfig
    from study.tracking import tracking_uri

    results = tmp_path_factory.mktemp("browser")
    assert run.main([SMOKE, "--set", f"tracking.results_dir={results}",
                     "--set", "ablation.variants=[lstm, gru]",
                     "--set", "ablation.datasets=[linux]", "--no-progress"]) == 0
    uri = tracking_uri(TrackingConfig(results_dir=str(results)))
    assert report.main(["--tracking-uri", uri, "--out", str(results / "report"),
                        "--no-log"]) == 0
    return uri, results


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    from study import ui

    uri, _ = store
    log = tmp_path_factory.mktemp("ui") / "mlflow-ui.log"
    with ui.start(uri, log=log) as srv:
        yield srv


def _page(browser):
    """A page in a fresh profile (a new context: empty local storage)."""
    ctx = browser.new_context(viewport=VIEWPORT)
    return ctx, ctx.new_page()


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name))


def _api(url: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}{endpoint}?{urllib.parse.urlencode(query)}") as r:
        return json.loads(r.read())


def _artifacts(url: str, run_id: str, path: str) -> set[str]:
    found = _api(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
    return {f["path"] for f in found.get("files", [])}


def test_the_printed_link_opens_the_runs_table(browser, server, store):
    from study import ui

    uri, _ = store
    out = io.StringIO()
    ui.print_links(uri, server.url, file=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].split()[:3] == ["smoke", "3", "runs"], lines
    link = lines[0].split()[-1]
    assert link == ui.runs_link(server.url, server.experiments[0].experiment_id)

    ctx, page = _page(browser)
    try:
        page.goto(link)
        page.locator("[role=columnheader]", has_text=TEST_LOSS).first.wait_for(timeout=30000)
        from study.tracking import Reader

        names = [r.name for r in Reader(uri).runs(["smoke"])]
        assert len(names) == 3
        for name in names:  # a flat list: the parent and its children, none collapsed
            page.get_by_role("link", name=name, exact=True).first.wait_for(timeout=10000)
        assert "/runs" in page.url and "overview" not in page.url
        assert "workflowType=machine_learning" in page.url
        # sorted by test loss, ascending: the sort control names it
        state = urllib.parse.unquote(page.url)
        assert f"orderByKey=metrics.`{TEST_LOSS}`" in state and "orderByAsc=true" in state
        # the empty attribute columns are not shown; no Assistant panel on 127.0.0.2
        headers = page.locator("[role=columnheader]").all_inner_texts()
        assert not {"Dataset", "Source", "Models"} & set(headers), headers
        if ui._needs_allow_list(urllib.parse.urlparse(server.url).hostname):
            assert page.get_by_text("MLflow Assistant").count() == 0
        page.wait_for_timeout(500)
        _shot(page, "runs_table.png")
    finally:
        ctx.close()


def _a_run(server, store) -> tuple[str, str]:
    from study.tracking import Reader

    uri, _ = store
    eid = server.experiments[0].experiment_id
    runs = Reader(uri).runs(["smoke"], tags={"kind": "train", "variant": "lstm"})
    return eid, runs[0].run_id


def test_a_runs_charts_and_trace_page(browser, server, store):
    from study import ui

    eid, run_id = _a_run(server, store)
    ctx, page = _page(browser)
    try:
        page.goto(ui.run_link(server.url, eid, run_id, tab="model-metrics"))
        search = page.get_by_placeholder("Search metric charts")
        search.wait_for(timeout=30000)
        search.fill("nats_per_char")  # the loss charts (their section sorts after errflow)
        # the chart section "loss" (from the metrics' loss/ prefix) with its test-loss chart
        page.get_by_text("loss", exact=True).first.wait_for(timeout=30000)
        page.get_by_text("test_nats_per_char", exact=True).first.wait_for(timeout=30000)
        page.locator("canvas, svg.main-svg").first.wait_for(timeout=30000)
        assert page.get_by_text("Evaluations", exact=True).count() == 0  # breadcrumb: Runs
        page.wait_for_timeout(1500)  # let the charts draw
        _shot(page, "run_charts.png")

        have = _artifacts(server.url, run_id, "probes")
        assert TRACE_PAGE in have, f"no trace page among {sorted(have)}"
        page.goto(ui.run_link(server.url, eid, run_id, artifact=TRACE_PAGE))
        frame = page.locator("iframe").first
        frame.wait_for(timeout=30000)
        body = page.frame_locator("iframe").first.locator("body")
        body.wait_for(timeout=30000)
        deadline = time.monotonic() + 20
        while not body.inner_text().strip() and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        text = body.inner_text()
        assert "activation of the unit" in text and "in_comment #1" in text, text[:300]
        _shot(page, "run_trace.png")
    finally:
        ctx.close()


def test_the_report_loads_with_every_image(browser, store):
    _, results = store
    html = results / "report" / "report.html"
    ctx, page = _page(browser)
    try:
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("""() => Array.from(document.images).map(i =>
            ({src: i.getAttribute('src').slice(0, 60), w: i.naturalWidth, ok: i.complete}))""")
        assert images, "the report has no images"
        broken = [i["src"] for i in images if not (i["ok"] and i["w"] > 0)]
        assert not broken, f"{len(broken)} of {len(images)} images not decoded: {broken}"
        _shot(page, "report.png")
    finally:
        ctx.close()
