"""End to end: the dashboard page in Debian's headless Chromium, driven by Playwright.

The real server runs on a free 127.0.0.1 port over copies of the recorded runs (a grown run, its
static baseline, a PPO run) and a small study. The tests check that the page opens the newest
run, that no element overflows its card at 1000, 1400 and 1920 px, that hovering a chart shows
values, that a compared run is drawn beside the picked one, that a foreign Host header gets a
403, and that a live run is followed (appended epochs, a resume, a malformed line). Every page
must ask no other host for anything and raise no script error. Screenshots go to
``test-artifacts/dashboard/`` (git-ignored). Skips with a reason when Chromium or Playwright is
missing (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper.karn.dashboard import DashboardServer, open_listener
from esper.leyline.events import EpochCompleted, RunFinished, RunStarted, event_record
from esper.nissa.log import EVENTS_FILE
from test_dashboard import copy_run, write_study

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
WIDTHS = (1000, 1400, 1920)  # the viewport widths the layout must fit (issue #15)
HEIGHT = 1000
FIRST_LINES = 30  # the part of the recorded run that is there when the live page opens
WAIT_MS = 5000  # Playwright's timeout for each expectation

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

OVERFLOW = """() => {
  const found = [];
  for (const card of document.querySelectorAll('.card')) {
    if (card.offsetParent === null) continue;  // hidden (another view)
    const right = card.getBoundingClientRect().right;
    const title = (card.querySelector('h2') || card).textContent.trim();
    if (card.scrollWidth > card.clientWidth) found.push(`${title}: scrolls`);
    for (const node of card.querySelectorAll('*')) {
      const box = node.getBoundingClientRect();
      if (box.right > right + 1) found.push(`${title}: ${node.tagName}.${node.className}`);
    }
  }
  return found;
}"""
"""Every element of a visible card that reaches past the card's right edge (1 px of rounding
allowed), and every card that scrolls sideways."""


def stat(page: Any, label: str) -> Any:
    """The value of a run-level number in the summary, by its label."""
    return page.locator(f'.stat[data-label="{label}"] .value')


def series(page: Any, chart: str) -> list[dict[str, Any]]:
    """Labels and data of a uPlot chart the page drew (``window.esperDashboard``)."""
    found: list[dict[str, Any]] = page.evaluate(
        """(id) => { const u = window.esperDashboard.charts.get(id).u;
             return u.series.map((s, i) => ({label: s.label, data: u.data[i]})); }""",
        chart,
    )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, recorded_runs: dict[str, Path]) -> Iterator[str]:
    """The dashboard over the recorded runs (the heuristic one changed last) and a study."""
    runs = tmp_path_factory.mktemp("site") / "runs"
    for name in ("static", "ppo", "heuristic"):
        copy_run(recorded_runs[name], runs / name)
    study = write_study(runs / "st", recorded_runs)
    from esper.leyline.trials import VerdictRoles, read_trials
    from esper.study.results import write_results

    roles = VerdictRoles(matched=frozenset({("heuristic", "static")}))
    rows = [trial.row for trial in read_trials(study)]  # results.md's numbers, so far
    write_results(study, rows, ["static"], reps=30, unfinished=2, roles=roles)
    for age, log in enumerate(sorted(runs.glob(f"**/{EVENTS_FILE}"))):
        stamp = time.time() - 100 * (age + 1)
        os.utime(log, (stamp, stamp))
    os.utime(runs / "heuristic" / EVENTS_FILE)  # now: the newest
    from esper.cli.dashboard import study_table

    server = DashboardServer(
        runs,
        open_listener("127.0.0.1", 0),
        poll_seconds=0.1,
        snapshot_seconds=0.1,
        study_table=study_table,
    )
    with server.in_background() as url:
        yield url


class Watched:
    """A page whose requests and script errors are recorded, checked when the test ends."""

    def __init__(self, browser: Any, url: str, width: int) -> None:
        self.url = url
        self.requested: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": HEIGHT})
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def close(self) -> None:
        self.page.close()
        assert self.requested, "the page made no requests at all"
        assert all(address.startswith(self.url) for address in self.requested), self.requested
        assert self.errors == []


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    opened: list[Watched] = []

    def make(url: str, width: int = 1400) -> Any:
        opened.append(Watched(browser, url, width))
        return opened[-1].page

    yield make
    for watched in opened:
        watched.close()


def fits(page: Any, name: str) -> None:
    """No element overflows its card; a screenshot as ``name``.png."""
    page.wait_for_timeout(150)  # charts follow their card's width a frame after a resize
    assert page.evaluate(OVERFLOW) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_overflows_its_card(site: str, open_page: Any, width: int) -> None:
    page = open_page(site, width)
    page.goto(site)  # no run named: the newest is opened
    expect(stat(page, "run")).to_have_text("heuristic")
    expect(page.locator("#run-picker")).to_have_value("heuristic")
    expect(page.locator("#chart-accuracy .uplot")).to_have_count(1)
    expect(page.locator("#slots-table tbody td.stage")).to_have_count(3)
    fits(page, f"heuristic-{width}")

    page.goto(f"{site}#run=ppo")
    expect(stat(page, "run")).to_have_text("ppo")
    expect(page.locator("#chart-entropy .uplot")).to_have_count(1)
    fits(page, f"ppo-rounds-{width}")
    page.get_by_role("tab", name="by episode").click()
    expect(page.locator("#chart-accuracy .uplot")).to_have_count(1)
    expect(page.locator("#chart-episode-final .uplot")).to_have_count(1)
    labels = [s["label"] for s in series(page, "chart-accuracy")]
    assert labels == ["episode, epoch", "env 0 val", "env 0 train", "env 1 val", "env 1 train"]
    fits(page, f"ppo-episodes-{width}")

    page.goto(f"{site}#study=st")
    # 2 arms × (1 task + all); the first table imports rliable (3-8 s with other work running)
    expect(page.locator("#study-table tbody tr")).to_have_count(4, timeout=30_000)
    expect(page.locator("#study-table th").nth(3)).to_have_text("IQM test accuracy [95 % CI]")
    first = page.locator("#study-table tbody tr").first.locator("td")
    expect(first.nth(5)).to_have_text("1,000")  # results.md's 1000.5, rounded to even as there
    expect(page.locator("#study-bands .uplot")).to_have_count(1)
    expect(page.locator("#study-notes .notice")).to_have_text(
        ["Results so far: the study was interrupted with 2 trial(s) not finished. Running it "
         "again completes them."]
    )  # fmt: skip
    findings = page.locator("#study-findings")
    expect(findings.locator("h2")).to_have_text(
        ["Matched sizes", "Probability of improvement", "Verdicts"]
    )
    expect(findings.locator("tbody tr")).to_have_count(1 + 2)  # one matched; the task and all
    expect(findings.locator("li")).to_have_count(1)
    labels = [s["label"] for s in series(page, "band-0")]
    parts = ("median of 2", "Q3", "Q1")
    arms = ("heuristic", "static")
    assert labels == ["epoch", *[f"{arm} {part}" for arm in arms for part in parts]]
    fits(page, f"study-{width}")


def test_hovering_a_chart_shows_its_values(site: str, open_page: Any) -> None:
    page = open_page(site)
    page.goto(f"{site}#run=heuristic")
    plot = page.locator("#chart-accuracy .u-over")
    expect(plot).to_have_count(1)
    value = page.locator("#chart-accuracy .u-series", has_text="heuristic val").locator(".u-value")
    expect(value).to_have_text("—")  # nothing under the cursor yet
    box = plot.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    expect(value).to_have_text(re.compile(r"^\d+\.\d\d$"))
    epoch = page.locator("#chart-accuracy .u-series").first.locator(".u-value")
    expect(epoch).to_have_text(re.compile(r"^\d+$"))


def test_a_compared_run_is_drawn_with_the_picked_one(site: str, open_page: Any) -> None:
    page = open_page(site)
    page.goto(f"{site}#run=heuristic")
    expect(page.locator("#chart-accuracy .uplot")).to_have_count(1)
    page.select_option("#compare-picker", "static")
    legend = page.locator("#chart-accuracy .u-legend")
    expect(legend).to_contain_text("static val")
    expect(legend).to_contain_text("heuristic val")
    drawn = {s["label"]: s["data"] for s in series(page, "chart-accuracy")}
    assert list(drawn) == [
        "epoch",
        "heuristic val",
        "heuristic train",
        "static val",
        "static train",
    ]
    for run in ("heuristic", "static"):
        snap = page.request.get(f"{site}api/runs/{run}/snapshot").json()
        (episode,) = snap["envs"][0]["episodes"]
        at = dict(zip(drawn["epoch"], drawn[f"{run} val"], strict=True))
        epochs = episode["epochs"]
        assert [at[e] for e in epochs["epoch"]] == epochs["val_accuracy"]
    params = [s["label"] for s in series(page, "chart-params")]
    assert params == ["epoch", "heuristic", "static"]
    fits(page, "heuristic-vs-static-1400")


def test_an_address_that_is_no_percent_encoding_opens_the_newest_run(
    site: str, open_page: Any
) -> None:
    """``#run=%`` threw a URIError: "The dashboard could not start"; on a loaded page the
    change of address threw and nothing happened. (The page's script errors fail the test.)"""
    page = open_page(site)
    newest = page.request.get(f"{site}api/runs").json()["newest"]
    for address in ("#run=%", "#study=%E0%A4%A"):
        page.goto(f"{site}{address}")
        expect(page.locator("#run-picker")).to_have_value(newest)
        expect(page.locator("#run-view")).to_be_visible()
    page.goto(f"{site}#run=heuristic")
    expect(page.locator("#run-picker")).to_have_value("heuristic")
    page.evaluate("location.hash = '#run=%zz'")
    expect(page.locator("#run-picker")).to_have_value(newest)


def test_a_foreign_host_gets_a_403(site: str, open_page: Any) -> None:
    page = open_page(site)
    page.goto(site)
    expect(page.locator("#run-picker option[value=heuristic]")).to_have_count(1)
    port = re.search(r":(\d+)/", site).group(1)  # type: ignore[union-attr]
    for path in ("", "api/runs", "api/runs/heuristic/snapshot"):
        foreign = page.request.get(f"{site}{path}", headers={"Host": f"evil.example:{port}"})
        assert foreign.status == 403, path
        assert "refused" in foreign.text()
        ours = page.request.get(f"{site}{path}")
        assert ours.status == 200, path


def test_a_runs_directory_moved_away_is_said_and_its_return_followed(
    tmp_path: Path, recorded_runs: dict[str, Path], open_page: Any
) -> None:
    """The page said "server unreachable" while the server was up (its listing was a 500)."""
    runs = tmp_path / "runs"
    copy_run(recorded_runs["static"], runs / "r")
    server = DashboardServer(
        runs, open_listener("127.0.0.1", 0), poll_seconds=0.1, snapshot_seconds=0.1
    )
    with server.in_background() as url:
        page = open_page(url)
        page.goto(url)
        expect(stat(page, "run")).to_have_text("r")
        expect(page.locator("#connection")).to_have_text("live")
        runs.rename(tmp_path / "moved")
        expect(page.locator("#connection")).to_have_text("stopped")  # its log went with it
        page.evaluate("refreshRuns()")  # what the page does every few seconds
        expect(page.locator("#error")).to_have_text(f"runs directory {str(runs)!r} does not exist")
        expect(page.locator("#connection")).to_have_text("runs directory unavailable")
        (tmp_path / "moved").rename(runs)
        page.evaluate("refreshRuns()")
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#connection")).to_have_text("live")
        expect(stat(page, "run")).to_have_text("r")


def test_runs_that_appear_or_come_back_after_the_page_loaded_are_followed(
    tmp_path: Path, recorded_runs: dict[str, Path], open_page: Any
) -> None:
    """A page opened before the training started stayed idle for good, one whose address named
    a run made later showed another, and a run removed and made again stayed stopped (a
    browser walk-through)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    server = DashboardServer(
        runs, open_listener("127.0.0.1", 0), poll_seconds=0.1, snapshot_seconds=0.1
    )
    with server.in_background() as url:
        page = open_page(url)
        page.goto(url)
        expect(page.locator("#connection")).to_have_text("idle")
        copy_run(recorded_runs["static"], runs / "first")
        page.evaluate("refreshRuns()")  # what the page does every few seconds
        expect(stat(page, "run")).to_have_text("first")
        expect(page.locator("#connection")).to_have_text("live")

        named = open_page(url)
        named.goto(f"{url}#run=later")
        expect(stat(named, "run")).to_have_text("first")  # not there yet: the newest, saying so
        expect(named.locator("#error")).to_have_text(
            f'No run named "later" in {runs} (yet): showing the newest, first; the page '
            "switches to it when it appears."
        )
        copy_run(recorded_runs["heuristic"], runs / "later")
        named.evaluate("refreshRuns()")
        expect(stat(named, "run")).to_have_text("later")
        expect(named.locator("#run-picker")).to_have_value("later")
        expect(named.locator("#error")).to_be_hidden()

        shutil.rmtree(runs / "later")
        expect(named.locator("#connection")).to_have_text("stopped")
        copy_run(recorded_runs["static"], runs / "later")  # made again before any refresh
        named.evaluate("refreshRuns()")
        expect(named.locator("#connection")).to_have_text("live")
        expect(named.locator("#error")).to_be_hidden()
        expect(stat(named, "mode")).to_have_text("static")  # what is there now
        expect(stat(page, "run")).to_have_text("first")  # a newer run does not take over


def test_page_follows_a_live_run(
    tmp_path: Path, recorded_runs: dict[str, Path], open_page: Any
) -> None:
    source = recorded_runs["heuristic"]
    lines = (source / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    runs = tmp_path / "runs"
    run = runs / "live"
    run.mkdir(parents=True)
    shutil.copy(source / "config.json", run / "config.json")
    (run / EVENTS_FILE).write_text("\n".join(lines[:FIRST_LINES]) + "\n", encoding="utf-8")
    copy_run(recorded_runs["static"], runs / "baseline")
    stamp = time.time() - 100
    os.utime(runs / "baseline" / EVENTS_FILE, (stamp, stamp))

    # Appended later: the recorded lines up to the next epoch, with an unmistakable accuracy.
    later = FIRST_LINES
    while json.loads(lines[later])["event"] != EpochCompleted.__name__:
        later += 1
    marked: dict[str, Any] = {**json.loads(lines[later]), "val_accuracy": 87.654}
    appended = [*lines[FIRST_LINES:later], json.dumps(marked)]

    server = DashboardServer(
        runs, open_listener("127.0.0.1", 0), poll_seconds=0.1, snapshot_seconds=0.1
    )
    with server.in_background() as url:
        page = open_page(url)
        page.goto(url)
        expect(stat(page, "run")).to_have_text("live")  # the newest log
        expect(stat(page, "events")).to_have_text(str(FIRST_LINES))
        expect(stat(page, "status")).to_have_text("unfinished")

        with (run / EVENTS_FILE).open("a", encoding="utf-8") as log:
            log.write("\n".join(appended) + "\n")
        expect(stat(page, "events")).to_have_text(str(later + 1))
        expect(stat(page, f"val accuracy (epoch {marked['epoch']})")).to_have_text("87.65%")
        stages = page.locator("#slots-table tbody td.stage")
        expect(stages).to_have_text([slot["stage"] for slot in marked["slots"]])
        expect(page.locator("#connection")).to_have_text("live")
        fits(page, "live-1400")

        # Ctrl-C, then --resume: the page shows the run as unfinished again, not interrupted.
        stopped = RunFinished("interrupted", marked["epoch"], None, None, 0, 0, 0, 1.0)
        resumed = RunStarted("live", "heuristic", "synthetic", 0, 40, (), marked["epoch"])
        for event, status in ((stopped, "interrupted"), (resumed, "unfinished")):
            with (run / EVENTS_FILE).open("a", encoding="utf-8") as log:
                log.write(json.dumps({"t": 2.0, "run_id": "live", **event_record(event)}))
                log.write("\n")
            expect(stat(page, "status")).to_have_text(status)
        expect(stat(page, "attempts")).to_have_text("2")

        with (run / EVENTS_FILE).open("a", encoding="utf-8") as log:
            log.write("{not an event\n")
        error = page.locator("#error")
        expect(error).to_be_visible()
        expect(error).to_contain_text(f"{EVENTS_FILE}:{later + 4}")
        expect(page.locator("#connection")).to_have_text("stopped")
        expect(stat(page, "events")).to_have_text(str(later + 3))
