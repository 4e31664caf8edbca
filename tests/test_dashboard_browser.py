"""The dashboard in a real browser: `gateway serve` with a fleet, the page opened in headless Chromium,
and the RENDERED page checked (the totals its script filled in, the SVG chart and its data points,
the device list and its filters), not the HTML source.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so the test types the admin token into the
page like a user would. A second test uses `--dump-dom` to see the page without a token.
Needs the Debian package `chromium` (scripts/test installs it).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import load_config
from shared_ca.authority import utcnow
from shared_ca.storage.repositories import Storage
from tests.test_dashboard import fill_fleet
from tests.test_serve import Server, fetch, free_ports, gateway_command, init_data_dir, start_server, stop_server

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--no-first-run"]
WAIT_SECONDS = 20.0


@dataclass
class Served:
    server: Server
    token: str

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.https_port}{path}"

    def api(self, path: str) -> Any:
        context = ssl.create_default_context(cafile=str(self.server.ca_pem))
        reply = fetch(self.server.https_port, path, context=context, headers={"Authorization": f"Bearer {self.token}"})
        assert reply.status == 200, reply.body
        return json.loads(reply.body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed (Debian package `chromium`): scripts/test installs it. "
            "The dashboard must be checked in a real browser: this test is never skipped.",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("dashboard")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    app = create_app(load_config(data_dir, environ={}))
    try:
        fill_fleet(app)
        engine = app.extensions["gateway"].get().storage.engine
        token = Storage.open(engine).admin_tokens.create_admin_token("browser", created_by="test", now=utcnow()).token
    finally:
        app.extensions["gateway"].get().storage.engine.dispose()
    server = start_server(data_dir, workdir, http_port=http_port)
    try:
        yield Served(server, token)
    finally:
        stop_server(server)


class DevTools:
    """A headless Chromium and one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path) -> None:
        to_browser_read, to_browser = os.pipe()
        from_browser, from_browser_write = os.pipe()
        # Out of the way of 3 and 4, which the browser expects them on.
        read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
        for fd in (to_browser_read, from_browser_write):
            os.close(fd)
        script = f'exec "$0" "$@" 3<&{read_end} 4>&{write_end} {read_end}<&- {write_end}>&-'
        flags = [*BROWSER_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(
            ["bash", "-c", script, str(CHROMIUM), *flags],
            pass_fds=(read_end, write_end),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(read_end)
        os.close(write_end)
        self._out, self._in = to_browser, from_browser
        self._buffer = b""
        self._next = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    assert "error" not in reply, reply
                    return reply["result"]
            assert time.monotonic() < deadline, f"no answer to {method}"
            chunk = os.read(self._in, 1 << 16)
            assert chunk, "the browser closed its DevTools pipe"
            self._buffer += chunk

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        """The value of `expression` once it is truthy (the page's script works asynchronously)."""
        deadline = time.monotonic() + WAIT_SECONDS
        guarded = f"(() => {{ try {{ return {expression}; }} catch (error) {{ return null; }} }})()"  # page loading
        while not (value := self.evaluate(guarded)):
            assert time.monotonic() < deadline, f"{expression} stayed false:\n{self.dom()[:3000]}"
            time.sleep(0.1)
        return value

    def dom(self) -> str:
        return str(self.evaluate("document.documentElement.outerHTML"))

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    devtools = DevTools(tmp_path / "profile")
    try:
        yield devtools
    finally:
        devtools.close()


class RenderedPage(HTMLParser):
    """What the rendered DOM shows: texts by element id, table rows, and the chart's circles."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.circles: list[dict[str, str | None]] = []
        self.chart: dict[str, str | None] | None = None
        self._ids: list[tuple[str, str]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(dom)
        self.rows = {name: [row for row in rows if row] for name, rows in self.rows.items()}  # no header rows

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self._ids.append((tag, str(found["id"])))
            self.text[str(found["id"])] = ""
        if tag == "table":
            self._table = str(found["id"])
            self.rows[self._table] = []
        elif tag == "tr" and self._table:
            self.rows[self._table].append([])
        elif tag == "td":
            self._cell = []
        elif tag == "svg" and found.get("id") == "trend-chart":
            self.chart = found
        elif tag == "circle":
            self.circles.append(found)

    def handle_data(self, data: str) -> None:
        for _tag, ident in self._ids:
            self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._ids and self._ids[-1][0] == tag:
            self._ids.pop()
        if tag == "td" and self._table and self._cell is not None:
            self.rows[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def test_the_rendered_dashboard_shows_the_reports_numbers(browser: DevTools, served: Served, tmp_path: Path) -> None:
    browser.call("Page.navigate", browser.session, url=served.url("/admin/migration"))
    browser.wait_for("document.getElementById('status').className === 'error'")
    assert "Paste an admin token" in browser.evaluate("document.getElementById('status').textContent")
    assert browser.evaluate("document.getElementById('total-legacy').textContent") == "-"

    browser.evaluate("document.getElementById('token-input').focus()")
    browser.call("Input.insertText", browser.session, text=served.token)  # typed, as a user pastes it
    browser.evaluate("document.querySelector('#auth button[type=submit]').click()")
    browser.wait_for("document.getElementById('devices').tBodies[0].rows.length > 0")
    browser.wait_for("document.getElementById('status').textContent.startsWith('updated')")
    summary = served.api("/admin/api/migration/summary")
    page = RenderedPage(browser.dom())

    totals = summary["totals"]
    for state in ("legacy", "mapped", "migrated", "native", "retired", "total"):
        assert page.text[f"total-{state}"] == str(totals[state]), state
    assert page.text["percent-migrated"] == f"{totals['percent_migrated']:.1f} %"
    assert (page.text["to-move-total"], page.text["silent-total"]) == (
        str(summary["to_move_total"]),
        str(summary["silent_total"]),
    )
    assert page.chart is not None and page.chart["data-points"] == str(len(summary["trend"]))
    for series in ("legacy", "mapped", "migrated"):
        drawn = [(c["data-day"], int(str(c["data-value"]))) for c in page.circles if c["data-series"] == series]
        assert drawn == [(p["day"], p[series]) for p in summary["trend"]], series
    groups = {row[0]: row for row in page.rows["groups"]}
    assert groups["kiosks"][1] == "3" and groups["kiosks"][10] == "3"  # legacy; cut off by the sunset
    devices = served.api("/admin/api/devices?state=legacy,mapped")["devices"]
    assert [row[0] for row in page.rows["devices"]] == [d["identity"] for d in devices]
    kiosk = next(row for row in page.rows["devices"] if row[0] == "kiosk-1")
    assert kiosk[6] == "DES, SHA-1, static challenge" and kiosk[7].startswith("map it to an EST credential")
    assert served.token not in browser.dom()  # kept in sessionStorage only, the input emptied
    assert browser.evaluate("sessionStorage.getItem('gateway.adminToken')") == served.token

    # the filters narrow the list, the way the user picks them
    browser.evaluate(
        "const g = document.getElementById('filter-group'); g.value = 'kiosks'; g.dispatchEvent(new Event('change'))"
    )
    browser.wait_for("document.getElementById('devices').tBodies[0].rows.length === 3")
    assert [row[0] for row in RenderedPage(browser.dom()).rows["devices"]] == ["kiosk-1", "kiosk-2", "old-1"]
    browser.evaluate(
        "const s = document.getElementById('filter-state'); s.value = 'migrated';"
        " document.getElementById('filter-group').value = '';"
        " s.dispatchEvent(new Event('change'))"
    )
    browser.wait_for("document.getElementById('devices').tBodies[0].rows[0]?.cells[0].textContent === 'laptop-3'")
    shot = browser.call("Page.captureScreenshot", browser.session, format="png")["data"]
    (tmp_path / "dashboard.png").write_bytes(base64.b64decode(shot))  # kept for a look when this fails
    assert len(shot) > 10_000  # a rendered page, not a blank one

    browser.evaluate("document.getElementById('forget').click()")  # signing out clears the screen
    browser.wait_for("document.getElementById('status').className === 'error'")
    assert browser.evaluate("sessionStorage.getItem('gateway.adminToken')") is None
    assert browser.evaluate("document.getElementById('total-legacy').textContent") == "-"
    assert browser.evaluate("document.getElementById('devices').tBodies[0].rows.length") == 0
    assert browser.evaluate("document.getElementById('trend-chart')") is None


SCREENSHOTS = os.environ.get("GATEWAY_SCREENSHOTS")  # a directory: write the docs' screenshots there


def sign_in(browser: DevTools, served: Served, width: int, height: int = 900) -> None:
    """The dashboard at `width` x `height` CSS pixels, signed in, its numbers and devices loaded."""
    browser.call(
        "Emulation.setDeviceMetricsOverride", browser.session, width=width, height=height, deviceScaleFactor=1,
        mobile=False,
    )  # fmt: skip
    browser.call("Page.navigate", browser.session, url=served.url("/admin/migration"))
    browser.wait_for("document.getElementById('status').className === 'error'")
    browser.evaluate("document.getElementById('token-input').focus()")
    browser.call("Input.insertText", browser.session, text=served.token)
    browser.evaluate("document.querySelector('#auth button[type=submit]').click()")
    browser.wait_for("document.getElementById('status').textContent.startsWith('updated')")
    browser.wait_for("document.getElementById('devices').tBodies[0].rows.length > 0")


def test_the_dashboard_fits_1366_px_stacks_its_trend_and_shows_progress_to_each_sunset(
    browser: DevTools, served: Served
) -> None:
    sign_in(browser, served, 1366)
    # Nothing scrolls sideways on a 1366-px screen: the device table wraps, its last column is in view.
    geometry = browser.evaluate(
        "(() => { const t = document.getElementById('devices'); const h = t.tHead.rows[0].cells;"
        " return {page: document.documentElement.scrollWidth, table: t.getBoundingClientRect().right,"
        " actions: h[h.length - 1].getBoundingClientRect().right, tableScroll: t.scrollWidth,"
        " tableWidth: t.clientWidth}; })()"
    )
    assert geometry["page"] <= 1366 and geometry["table"] <= 1366 and geometry["actions"] <= 1366, geometry
    assert geometry["tableScroll"] <= geometry["tableWidth"] + 1, geometry

    # The trend is stacked: each day's marks sit at the running sum, legacy below mapped below migrated.
    summary = served.api("/admin/api/migration/summary")
    marks = browser.evaluate(
        "[...document.querySelectorAll('#trend-chart circle')].map((c) => ({series: c.dataset.series,"
        " day: c.dataset.day, value: Number(c.dataset.value), top: Number(c.dataset.top),"
        " cy: Number(c.getAttribute('cy'))}))"
    )
    bands = browser.evaluate("[...document.querySelectorAll('#trend-chart polygon.band')].map((p) => p.dataset.series)")
    assert bands == ["legacy", "mapped", "migrated"]
    for point in summary["trend"]:
        day = {m["series"]: m for m in marks if m["day"] == point["day"]}
        assert [day[s]["value"] for s in bands] == [point[s] for s in bands]
        assert day["legacy"]["top"] == point["legacy"]
        assert day["migrated"]["top"] == point["legacy"] + point["mapped"] + point["migrated"]
        assert day["legacy"]["cy"] >= day["mapped"]["cy"] >= day["migrated"]["cy"]  # y grows downwards

    # One bar per group: as long as its share migrated, with the days left to its sunset.
    bars = browser.evaluate(
        "Object.fromEntries([...document.getElementById('groups').tBodies[0].rows].map((r) => [r.dataset.group,"
        " {percent: Number(r.querySelector('.progress').dataset.percent),"
        " done: Number(r.querySelector('rect.done').getAttribute('width')),"
        " text: r.querySelector('.progress').textContent}]))"
    )
    for group in summary["groups"]:
        bar = bars["" if group["name"] is None else group["name"]]
        percent = group["percent_migrated"] or 0.0
        assert bar["percent"] == percent and abs(bar["done"] - 1.2 * percent) < 0.1, (group, bar)
        if group["sunset_at"]:
            assert " · sunset in " in bar["text"] or bar["text"].endswith("sunset passed"), bar
    assert bars["kiosks"]["text"].endswith(" · sunset in 30 d")
    if SCREENSHOTS:
        shot = browser.call("Page.captureScreenshot", browser.session, format="png", captureBeyondViewport=True)
        Path(SCREENSHOTS, "dashboard.png").write_bytes(base64.b64decode(shot["data"]))


def test_the_html_report_fits_1366_px_stacks_its_trend_and_prints_whole(
    browser: DevTools, served: Served, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    made = gateway_command(
        "migrate", "report", "--format", "html", "--out", str(page), "--data-dir", str(served.server.data_dir)
    )
    assert made.returncode == 0, made.stderr
    browser.call(
        "Emulation.setDeviceMetricsOverride", browser.session, width=1366, height=900, deviceScaleFactor=1,
        mobile=False,
    )  # fmt: skip
    browser.call("Page.navigate", browser.session, url=page.as_uri())
    browser.wait_for("!!document.getElementById('to_move')")
    geometry = browser.evaluate(
        "(() => { const t = document.getElementById('to_move'); const h = t.tHead.rows[0].cells;"
        " return {page: document.documentElement.scrollWidth, table: t.getBoundingClientRect().right,"
        " last: h[h.length - 1].getBoundingClientRect().right}; })()"
    )
    assert geometry["page"] <= 1366 and geometry["table"] <= 1366 and geometry["last"] <= 1366, geometry
    assert browser.evaluate("document.querySelectorAll('#trend-chart polygon.band').length") == 3
    bars = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#progress-bars li')].map((li) => [li.dataset.group,"
        " [Number(li.dataset.percent), Number(li.querySelector('rect.done').getAttribute('width'))]]))"
    )
    summary = served.api("/admin/api/migration/summary")
    for group in summary["groups"]:
        percent, width = bars["" if group["name"] is None else group["name"]]
        assert percent == (group["percent_migrated"] or 0.0) and abs(width - 1.6 * percent) < 0.1, group
    # Printed, the trend's numbers are whole (on screen they scroll in a box), and it makes a PDF.
    browser.call("Emulation.setEmulatedMedia", browser.session, media="print")
    box = browser.evaluate(
        "(() => { const b = document.querySelector('.numbers'); return [b.scrollHeight, b.clientHeight]; })()"
    )
    assert box[0] <= box[1] + 1, box
    pdf = browser.call("Page.printToPDF", browser.session, landscape=True)["data"]
    assert base64.b64decode(pdf).startswith(b"%PDF")
    if SCREENSHOTS:
        browser.call("Emulation.setEmulatedMedia", browser.session, media="screen")
        shot = browser.call("Page.captureScreenshot", browser.session, format="png", captureBeyondViewport=True)
        Path(SCREENSHOTS, "report.png").write_bytes(base64.b64decode(shot["data"]))


def test_without_a_token_the_page_asks_for_one(served: Served, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(CHROMIUM),
            *BROWSER_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            served.url("/admin/migration"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    page = RenderedPage(done.stdout)
    assert page.text["status"].startswith("Paste an admin token")  # the script ran and got 401
    assert page.text["total-legacy"] == "-" and page.rows["devices"] == []
