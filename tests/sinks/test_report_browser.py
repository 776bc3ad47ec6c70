"""The HTML report in a real browser: Debian's headless Chromium (installed by .ci/run).

Chromium loads the page from a file with background networking off and a fresh profile. The page
records in attributes of <html> what happened: how many charts plotly drew (data-charts-drawn), how
many resources the page fetched (Resource Timing, data-resource-loads) and how many fetches its
Content-Security-Policy blocked (data-csp-violations). No request made means: zero fetched and
zero blocked. A control page that does reference a remote image proves the check can fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.sinks.report import write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "report" / "demo"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-extensions", "--hide-scrollbars", "--virtual-time-budget=20000"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is required for this test (apt-get install chromium; .ci/run installs it)"
    return path


def run(page: Path, profile: Path, *extra: str) -> str:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": "UTC"})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def root_attrs(dom: str) -> dict[str, str]:
    tag = re.search(r"<html([^>]*)>", dom)
    assert tag, dom[:500]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag[1]))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "demo"
    shutil.copytree(FIXTURE, out)
    return Path(write_report(str(out)))


@pytest.fixture(scope="module")
def rendered(page: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One Chromium run (about 3 s) gives both the DOM after scripts ran and a screenshot."""
    tmp = tmp_path_factory.mktemp("chromium")
    shot = tmp / "report.png"
    dom = run(page, tmp / "profile", "--window-size=1400,3000", f"--screenshot={shot}", "--dump-dom")
    return dom, shot


def test_report_renders_findings_and_charts_without_network(page: Path, rendered: tuple[str, Path]) -> None:
    dom = rendered[0]
    attrs = root_attrs(dom)
    source = page.read_text()
    charts = len(re.findall(r'data-fig="fig\d+"', source))
    assert attrs.get("ready") == "1"
    assert int(attrs["charts-drawn"]) == charts >= 6
    assert attrs["resource-loads"] == "0" and "csp-violations" not in attrs
    # plotly drew an SVG into every chart div
    assert dom.count('class="main-svg"') >= charts
    table = dom[dom.index('id="findings-table"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") - 1 == 4  # header row + one per finding in the fixture
    # no element in the rendered DOM points outside the page (script text is code, not markup: cut it)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", dom, flags=re.S)
    assert not re.search(r"""\s(?:src|href|action|xlink:href)=["'](?:https?:|//)""", markup)


def test_screenshot_is_saved(rendered: tuple[str, Path]) -> None:
    shot = rendered[1]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page compresses to a few KB
    keep = os.environ.get("REPORT_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "report.png"))


def test_the_network_check_catches_a_remote_reference(tmp_path: Path) -> None:
    """Control: a report page (an empty run's, small) with one remote image must show a blocked fetch,
    or the check above proves nothing."""
    bad = tmp_path / "bad.html"
    html = Path(write_report(str(tmp_path))).read_text()
    bad.write_text(html.replace("<main>", '<main><img src="http://192.0.2.1/pixel.png" alt="">', 1))
    attrs = root_attrs(run(bad, tmp_path / "profile", "--dump-dom"))
    assert int(attrs.get("csp-violations", "0")) >= 1 and "192.0.2.1" in attrs.get("csp-blocked", "")
