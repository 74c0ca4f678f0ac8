"""`orch browse` in a real browser: headless Chromium (from the system packages, installed with
apt-get when missing) loads the index, a canned query, a task's timeline and the DAG page of a
project that has run, served by `orch browse --port 0`. Asserts on the rendered DOM, follows
the DAG's links over HTTP, reads Chromium's network log to prove no request of the pages left
127.0.0.1, proves read-only (writes refused, the database's checksum unchanged) and that Ctrl-C
stops it cleanly. Screenshots are saved under the test's tmp dir."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest

from kernel.store import db, schema
from tests.browse_project import get, ran_project, start_browse, stop_browse
from tests.conftest import orch, orch_json
from tests.e2e import pid_gone, wait_for

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # Chromium's own services (not the page) would call Google: off, and they never
         # reach the network anyway.
         "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,"
         "MediaRouter",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium() -> str:
    """The system's Chromium; installed from the Debian packages when missing."""
    found = shutil.which("chromium")
    if found is None:
        for args in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}"
        found = shutil.which("chromium")
    assert found, "chromium is not installed and apt-get could not install it"
    return found


@dataclass
class Browser:
    exe: str
    shots: Path
    net_logs: list[Path]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        log = self.shots / f"net-{len(self.net_logs)}.json"
        self.net_logs.append(log)
        try:
            return subprocess.run([self.exe, *FLAGS, f"--user-data-dir={profile}",
                                   f"--log-net-log={log}", *args],
                                  capture_output=True, text=True, timeout=180)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def dom(self, url: str) -> str:
        proc = self._run("--dump-dom", url)
        assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
        return proc.stdout

    def screenshot(self, url: str, name: str) -> Path:
        path = self.shots / f"{name}.png"
        proc = self._run(f"--screenshot={path}", "--window-size=1280,900", "--hide-scrollbars",
                         url)
        assert proc.returncode == 0 and path.stat().st_size > 10_000, proc.stderr[-2000:]
        return path


def page_requests(log: Path) -> list[str]:
    """The URLs Chromium fetched for the page (network isolation key of the page's site):
    Chromium's own background requests have another key and are left out."""
    data = json.loads(log.read_text())
    start = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in data["events"]:
        params = event.get("params") or {}
        if event["type"] == start and "url" in params:
            key = str(params.get("network_isolation_key", ""))
            if key.startswith("http://127.0.0.1"):
                urls.append(params["url"])
    return urls


class Elements(HTMLParser):
    """Every start tag of a DOM, with its attributes (inline SVG included)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags
                if t == tag and (cls is None or cls in a.get("class", "").split())]


def external_resources(html: str) -> list[str]:
    """Attributes that would make the page load something from another host."""
    found = []
    for tag, attrs in Elements(html).tags:
        for name in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(name, "")
            loads = name != "href" or tag in ("link", "image", "use", "script")
            if loads and re.match(r"(?i)^(https?:)?//", value) \
                    and urlparse(value).hostname != "127.0.0.1":
                found.append(f"<{tag} {name}={value}>")
    found += re.findall(r"url\(\s*['\"]?(?:https?:)?//(?!127\.0\.0\.1)[^)]*\)", html)
    found += re.findall(r"@import\s+['\"]?(?:https?:)?//(?!127\.0\.0\.1)[^;]*", html)
    return found


def checksum(root: Path) -> str:
    """sha256 of kernel.db once its WAL is checkpointed into it."""
    conn = schema.connect(root / ".state" / "kernel.db")
    try:
        db.checkpoint(conn, "TRUNCATE")
    finally:
        conn.close()
    return hashlib.sha256((root / ".state" / "kernel.db").read_bytes()).hexdigest()


@dataclass
class Served:
    root: Path
    url: str
    proc: subprocess.Popen[str]
    checksum: str
    browser: Browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`orch browse --port 0` over a project that has run, and a browser for it."""
    base = tmp_path_factory.mktemp("browse")
    root = ran_project(base / "proj")
    before = checksum(root)
    shots = base / "screenshots"
    shots.mkdir()
    browser = Browser(chromium(), shots, [])
    proc, url = start_browse(root)
    yield Served(root, url, proc, before, browser)
    if proc.poll() is None:
        stop_browse(proc)
    print(f"\nscreenshots: {shots}")


def test_the_index_page_describes_the_project_and_links_the_dag_pages(served: Served) -> None:
    html = served.browser.dom(served.url)
    assert "<h1>orch: proj</h1>" in html
    links = {a.get("href") for a in Elements(html).find("a")}
    assert {"/-/dag", "/-/dag/ws", "/-/dag/docs", "/kernel/ready_work", "/kernel/blocked_work",
            "/kernel/task_timeline", "/kernel/agent_usage"} <= links
    served.browser.screenshot(served.url, "index")
    table = served.browser.dom(served.url + "kernel/task")
    assert "One row per task" in table  # the table's description
    assert 'class="facet-info' in table or "facet-info" in table  # facets by state and more
    served.browser.screenshot(served.url + "kernel/task", "task-table")


def test_a_canned_query_shows_blocked_work_and_why(served: Served) -> None:
    url = served.url + "kernel/blocked_work"
    html = served.browser.dom(url)
    assert "Blocked work and what blocks it" in html
    assert "publish-docs" in html and "check-links (failed)" in html
    assert "orch retry check-links" in html
    served.browser.screenshot(url, "blocked-work")
    usage = served.browser.dom(served.url + "kernel/agent_usage")
    assert "scripted-1" in usage and "1200" in usage and "0.0125" in usage
    served.browser.screenshot(served.url + "kernel/agent_usage", "agent-usage")


def test_a_task_timeline_lists_its_events_and_attempts(served: Served) -> None:
    url = served.url + "kernel/task_timeline?task_id=flaky-smoke"
    html = served.browser.dom(url)
    for expected in ("task_created", "attempt 1 started", "attempt 1 failed",
                     "attempt 2 succeeded", "task_completed"):
        assert expected in html, expected
    served.browser.screenshot(url, "timeline")


def test_the_dag_page_marks_the_critical_path_and_its_links_resolve(served: Served) -> None:
    code, plan = orch_json("--root", str(served.root), "plan", "ws")
    assert code == 0
    url = served.url + "-/dag/ws"
    html = served.browser.dom(url)
    elements = Elements(html)
    nodes = elements.find("g", "node")
    assert sorted(n["data-task-id"] for n in nodes) == sorted(
        t for s in plan["stages"] for t in s["parallel_tasks"])
    critical = [n["data-task-id"] for n in nodes if "critical" in n["class"].split()]
    assert sorted(critical) == sorted(plan["critical_path_tasks"])
    assert {n["data-state"] for n in nodes} == {"completed"}
    assert elements.find("path", "critical")
    task_links = [a["href"] for a in elements.find("a", "task-link")]
    timelines = [a["href"] for a in elements.find("a", "timeline-link")]
    assert len(task_links) == len(timelines) == len(nodes)
    for href, node in zip(task_links, nodes, strict=True):
        status, body = get(served.url.rstrip("/") + href + ".json?_shape=objects")
        assert status == 200, href
        (row,) = json.loads(body)["rows"]
        assert row["task_id"] == node["data-task-id"] and row["workstream_id"] == "ws"
    for href in timelines:
        status, body = get(served.url.rstrip("/") + href.replace(
            "/task_timeline?", "/task_timeline.json?_shape=array&"))
        assert status == 200 and json.loads(body), href
    # The picture `orch plan --format svg` writes is the page's, less the links.
    cli = orch("--root", str(served.root), "plan", "ws", "--format", "svg").stdout
    assert sorted((n["data-task-id"], n["class"], n["data-state"])
                  for n in Elements(cli).find("g", "node")) == sorted(
        (n["data-task-id"], n["class"], n["data-state"]) for n in nodes)
    status, _ = get(url + "?stage=99")
    assert status == 404
    served.browser.screenshot(url, "dag-ws")
    docs = served.browser.dom(served.url + "-/dag/docs")
    states = {n["data-task-id"]: n["data-state"] for n in Elements(docs).find("g", "node")}
    assert states == {"write-docs": "completed", "check-links": "failed",
                      "publish-docs": "pending"}
    served.browser.screenshot(served.url + "-/dag/docs", "dag-docs")
    index = served.browser.dom(served.url + "-/dag")
    assert {"/-/dag/ws", "/-/dag/docs"} <= {a.get("href") for a in Elements(index).find("a")}


def test_no_request_leaves_127_0_0_1(served: Served) -> None:
    pages = ["", "kernel", "kernel/task", "kernel/blocked_work", "-/dag/ws",
             "kernel/task_timeline?task_id=setup"]
    for page in pages:
        status, html = get(served.url + page)
        assert status == 200, page
        assert external_resources(html) == [], page
    served.browser.dom(served.url + "-/dag/ws")
    fetched = [u for log in served.browser.net_logs for u in page_requests(log)]
    assert any(u.endswith("/-/dag/ws") for u in fetched)
    assert any("/-/static/" in u for u in fetched)  # the stylesheet, from Datasette itself
    assert {urlparse(u).hostname for u in fetched} == {"127.0.0.1"}, fetched
    status, settings = get(served.url + "-/settings.json")
    assert status == 200 and json.loads(settings)["allow_download"] is False


def post(url: str, body: bytes, content_type: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type,
                                              "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_writes_are_refused(served: Served, tmp_path: Path) -> None:
    url = served.url
    # Arbitrary SQL is read-only: Datasette refuses anything but a SELECT...
    status, body = get(url + "kernel.json?sql=UPDATE+task+SET+priority+%3D+9")
    assert status == 400 and "Statement must be a SELECT" in body
    # ...and nothing but GET and HEAD gets through: no JSON write API (Datasette 1.0's
    # paths), form, canned query or upload.
    for path in ("kernel/task/-/insert", "kernel/-/create", "kernel/task/setup/-/update",
                 "kernel/ready_work", "kernel", "-/upload-csvs"):
        for body, kind in ((b'{"row": {"task_id": "x"}}', "application/json"),
                           (b"sql=DELETE+FROM+event", "application/x-www-form-urlencoded")):
            status, text = post(url + path, body, kind)
            assert status == 405 and "read-only" in text, (path, status, text)
    # A canned write query, were one configured (here by plain Datasette, which loads orch's
    # plugin through its entry point), fails: every connection to orch's database is
    # query-only.
    metadata = tmp_path / "write.json"
    metadata.write_text(json.dumps({"databases": {"kernel": {"queries": {"bump": {
        "sql": "UPDATE task SET priority = priority + 1", "write": True}}}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "datasette", "serve", str(served.root / ".state" / "kernel.db"),
         "--metadata", str(metadata), "--get", "/-/plugins.json"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "orch-kernel" in proc.stdout, proc.stderr
    script = (
        "import asyncio, json, sys\n"
        "from datasette.app import Datasette\n"
        "ds = Datasette([sys.argv[1]], metadata=json.load(open(sys.argv[2])))\n"
        "async def main():\n"
        "    await ds.invoke_startup()\n"
        "    r = await ds.client.post('/kernel/bump', json={}, "
        "headers={'accept': 'application/json'})\n"
        "    print(r.text)\n"
        "asyncio.run(main())\n")
    proc = subprocess.run([sys.executable, "-c", script,
                           str(served.root / ".state" / "kernel.db"), str(metadata)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is False and "readonly" in result["message"], result


def test_ctrl_c_stops_it_cleanly_and_nothing_was_written(served: Served) -> None:
    children = subprocess.run(["pgrep", "-P", str(served.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert children, "Datasette runs as its own process"
    code, err = stop_browse(served.proc)
    assert code == 0, err
    assert "Traceback" not in err
    for pid in children:
        wait_for(lambda pid=pid: pid_gone(int(pid)), timeout=15, message=f"{pid} to end")
    assert checksum(served.root) == served.checksum
    assert orch("--root", str(served.root), "doctor").returncode == 0
