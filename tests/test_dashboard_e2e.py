"""End to end: the dashboard page in Debian's headless Chromium, driven by Playwright.

The real server runs on a free 127.0.0.1 port over a copy of part of a recorded run; the test
picks the run, appends events to its log and checks that the page shows them, that the page asked
no other host for anything, and that a malformed line is reported on the page. A screenshot is
saved to ``test-artifacts/dashboard.png``. Skips with a reason when Chromium or Playwright is
missing (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from esper.karn.dashboard import DashboardServer, open_listener
from esper.leyline.events import EpochCompleted, RunFinished, RunStarted, event_record
from esper.nissa.log import EVENTS_FILE

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard.png"
FIRST_LINES = 30  # the part of the recorded run that is there when the page opens
WAIT_MS = 5000  # Playwright's timeout for each expectation

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def test_page_follows_a_live_run(tmp_path: Path, recorded_runs: dict[str, Path]) -> None:
    source = recorded_runs["heuristic"]
    lines = (source / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    runs = tmp_path / "runs"
    run = runs / "live"
    run.mkdir(parents=True)
    shutil.copy(source / "config.json", run / "config.json")
    (run / EVENTS_FILE).write_text("\n".join(lines[:FIRST_LINES]) + "\n", encoding="utf-8")
    shutil.copytree(recorded_runs["static"], runs / "baseline")

    # Appended later: the recorded lines up to the next epoch, with an unmistakable accuracy.
    later = FIRST_LINES
    while json.loads(lines[later])["event"] != EpochCompleted.__name__:
        later += 1
    marked: dict[str, Any] = {**json.loads(lines[later]), "val_accuracy": 87.654}
    appended = [*lines[FIRST_LINES:later], json.dumps(marked)]

    server = DashboardServer(runs, open_listener("127.0.0.1", 0), poll_seconds=0.1)
    requested: list[str] = []
    page_errors: list[str] = []
    with server.in_background() as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.set_default_timeout(WAIT_MS)
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(url)
            expect = sync_api.expect
            expect(page.locator("#run-picker option[value=live]")).to_have_count(1)
            page.select_option("#run-picker", "live")
            expect(page.locator("#event-count")).to_have_text(str(FIRST_LINES))
            expect(page.locator("#run-status")).to_have_text("unfinished")

            with (run / EVENTS_FILE).open("a", encoding="utf-8") as log:
                log.write("\n".join(appended) + "\n")
            expect(page.locator("#event-count")).to_have_text(str(later + 1))
            expect(page.locator("#latest-val-acc")).to_have_text("87.65")
            expect(page.locator("#latest-epoch")).to_have_text(str(marked["epoch"]))
            stages = page.locator("#slots-table tbody td.stage")
            expect(stages).to_have_text([slot["stage"] for slot in marked["slots"]])
            expect(page.locator("#connection")).to_have_text("live")
            ARTIFACT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)

            # Ctrl-C, then --resume: the page shows the run as live again, not interrupted.
            stopped = RunFinished("interrupted", marked["epoch"], None, None, 0, 0, 0, 1.0)
            resumed = RunStarted("live", "heuristic", "synthetic", 0, 40, (), marked["epoch"])
            for event, status in ((stopped, "interrupted"), (resumed, "unfinished")):
                with (run / EVENTS_FILE).open("a", encoding="utf-8") as log:
                    log.write(json.dumps({"t": 2.0, "run_id": "live", **event_record(event)}))
                    log.write("\n")
                expect(page.locator("#run-status")).to_have_text(status)

            with (run / EVENTS_FILE).open("a", encoding="utf-8") as log:
                log.write("{not an event\n")
            error = page.locator("#error")
            expect(error).to_be_visible()
            expect(error).to_contain_text(f"{EVENTS_FILE}:{later + 4}")
            expect(page.locator("#connection")).to_have_text("stopped")
            expect(page.locator("#event-count")).to_have_text(str(later + 3))
        finally:
            browser.close()

    assert requested, "the page made no requests at all"
    assert all(address.startswith(url) for address in requested), requested
    assert page_errors == []
    assert ARTIFACT.stat().st_size > 10_000
