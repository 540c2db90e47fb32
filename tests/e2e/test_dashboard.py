"""The dashboard in a real headless browser: Debian's Chromium driven by Playwright, against
a real cluster. Screenshots of every page go to ``$BURST_ARTIFACTS/dashboard`` (default
``.burst-ci/artifacts/dashboard``, which CI's checkout keeps)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, Cluster, running_cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

APP = """
    import burst

    app = burst.App("dash")

    @app.function(scaledown_window=600)
    def shout(word):
        print("shouting", word)
        return word.upper()

    @app.function(scaledown_window=600)
    def fail(x):
        raise ValueError(f"bad {x}")

    @app.function(scaledown_window=600)
    def slow(x):
        import time
        print("sleeping", x)
        time.sleep(300)
"""

ARTIFACTS = Path(os.environ.get("BURST_ARTIFACTS") or REPO / ".burst-ci" / "artifacts") \
    / "dashboard"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("Chromium is missing: `make install` installs Debian's chromium")
    return path


def api(cluster: Cluster, method: str, path: str, body: Any) -> dict[str, Any]:
    req = urllib.request.Request(cluster.profile["url"] + path,
                                 data=json.dumps(body).encode(), method=method)
    req.add_header("Authorization", f"Bearer {cluster.profile['token']}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=90) as r:
            out: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        out = json.loads(e.read())
    return out


def call(cluster: Cluster, fn: str, *args: Any) -> dict[str, Any]:
    return api(cluster, "POST", f"/v1/apps/dash/functions/{fn}/calls?wait=60",
               {"args": list(args)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Agents' figures (CPU, memory, GPUs) often enough for a test to see them.
    yield from running_cluster(tmp_path_factory, BURST_METRICS_INTERVAL="0.5")


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    app = write_app(tmp_path_factory.mktemp("dash"), APP, "dash_app.py")
    cluster.burst("deploy", str(app), check=True)
    assert call(cluster, "shout", "warm")["status"] == "success"
    assert call(cluster, "fail", 1)["status"] == "failure"
    assert api(cluster, "PUT", "/v1/budgets/workspace", {"limit": 25})["limit"] == 25
    # A webhook whose test delivery is logged (its URL answers nothing: it stays to retry).
    hook = api(cluster, "POST", "/v1/webhooks",
               {"url": "http://127.0.0.1:9/hook", "events": ["budget.exceeded"]})
    assert api(cluster, "POST", f"/v1/webhooks/{hook['id']}/test", {})["delivery_id"]
    return cluster


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # Root in CI: Chromium's own sandbox needs an unprivileged user.
        b = pw.chromium.launch(executable_path=_chromium(), headless=True,
                               args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _sign_in(browser: Any, cluster: Cluster, token: str) -> Any:
    ctx = browser.new_context(base_url=cluster.profile["url"])
    page = ctx.new_page()
    page.goto("/dashboard")
    assert page.url.endswith("/dashboard/login?next=/dashboard"), page.url
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url("**/dashboard")
    return page


def _until(page: Any, ok: Any, within: float = 30.0) -> None:
    """Reload ``page`` until ``ok()`` (what an agent reports arrives with its next
    heartbeat or figures: a moment later on a loaded machine)."""
    deadline = time.monotonic() + within
    while not ok() and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    assert ok()


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_wrong_token_is_refused(deployed: Cluster, browser: Any) -> None:
    ctx = browser.new_context(base_url=deployed.profile["url"])
    page = ctx.new_page()
    page.goto("/dashboard/calls")
    assert "/dashboard/login" in page.url
    page.fill("#token", "bst_" + uuid.uuid4().hex)
    with page.expect_response("**/dashboard/login") as resp:
        page.click("#sign-in")
    assert resp.value.status == 401
    assert "invalid token" in page.inner_text("#login-error")
    assert not ctx.cookies()
    empty = ctx.request.post("/dashboard/login", form={"token": ""}, max_redirects=0)
    assert empty.status == 401 and "no token given" in empty.text()
    assert not ctx.cookies()
    # A forged session cookie is no session either.
    ctx.add_cookies([{"name": "burst_session", "value": f"{int(time.time()) + 99}.{'0' * 64}.x",
                      "url": deployed.profile["url"] + "/dashboard"}])
    page.goto("/dashboard/containers")
    assert "/dashboard/login" in page.url
    _shot(page, "login-refused")
    ctx.close()


def test_the_session_cookie_is_httponly_and_strict(deployed: Cluster, browser: Any) -> None:
    page = _sign_in(browser, deployed, deployed.profile["token"])
    [cookie] = page.context.cookies()
    assert cookie["name"] == "burst_session"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard"
    # Script on the page cannot read it.
    assert "burst_session" not in page.evaluate("document.cookie")
    # A form without the session's CSRF token is refused; with it, sign-out works.
    # (Script on the page could not even send it: the pages' CSP allows no fetch.)
    status = page.context.request.post("/dashboard/logout", form={"csrf": "nope"},
                                       max_redirects=0).status
    assert status == 403
    assert page.context.cookies()
    page.click("text=Sign out")
    page.wait_for_url("**/dashboard/login")
    assert not page.context.cookies()
    page.context.close()


def test_every_page_loads_with_the_clusters_data(deployed: Cluster, browser: Any) -> None:
    page = _sign_in(browser, deployed, deployed.profile["token"])
    rows = page.locator("#functions tr.fn")
    assert rows.count() == 3
    shout = page.locator('tr.fn[data-function="shout"]')
    assert int(shout.locator("td.calls").inner_text()) >= 1
    assert page.locator('tr.fn[data-function="fail"] td.errors').inner_text().startswith("1")
    assert shout.locator("svg.spark rect").count() >= 1  # a bar for the minute of its call
    _shot(page, "overview")

    page.goto("/dashboard/containers")
    _until(page, lambda: "shout" in page.inner_text("#containers"))
    shout_row = page.locator("#containers tr.container", has_text="shout")
    assert int(shout_row.locator("td.num").first.inner_text()) >= 1  # inputs served
    _shot(page, "containers")

    page.goto("/dashboard/agents")
    assert page.locator("#agents tr.agent").count() >= 1
    assert page.locator("#agents svg.meter").count() >= 2
    # The agent's own figures (published over NATS): its CPU in use.
    _until(page, lambda: "%" in page.inner_text("#agents td.cpu-use"))
    _shot(page, "agents")

    page.goto("/dashboard/billing")
    assert page.locator("svg.chart").count() == 1
    assert page.locator("svg.chart line.limit").count() == 1  # the workspace budget
    assert "workspace" in page.inner_text("#budgets tr.budget")
    _shot(page, "billing")

    page.goto("/dashboard/webhooks")
    assert "webhook.test" in page.inner_text("#deliveries tr.delivery")
    _shot(page, "webhooks")
    page.context.close()


def test_a_call_made_now_appears_with_its_logs(deployed: Cluster, browser: Any) -> None:
    page = _sign_in(browser, deployed, deployed.profile["token"])
    word = "w" + uuid.uuid4().hex[:10]
    out = call(deployed, "shout", word)
    assert out["status"] == "success", out
    call_id = out["call_id"]
    page.goto("/dashboard/calls")
    row = page.locator(f'tr.call[data-call="{call_id}"]')
    assert row.count() == 1, page.inner_text("#calls")
    assert "shout" in row.inner_text() and "success" in row.inner_text()
    _shot(page, "calls")
    row.locator("a").click()
    page.wait_for_url(f"**/dashboard/calls/{call_id}")
    assert page.inner_text("#status") == "success"
    # Its printed line: stored by the agent before the output, so there at once, but
    # read back through the logs stream: a reload or two on a loaded machine.
    _until(page, lambda: f"shouting {word}" in page.inner_text("#logs"))
    _shot(page, "call")
    page.goto("/dashboard/calls/ca-doesnotexist")
    assert "not found" in page.inner_text("#error")
    page.context.close()


def test_a_pending_call_is_cancelled_from_its_page(deployed: Cluster, browser: Any) -> None:
    page = _sign_in(browser, deployed, deployed.profile["token"])
    pending = api(deployed, "POST", "/v1/apps/dash/functions/slow/calls", {"args": [1]})
    assert pending["status"] == "pending", pending
    page.goto(f"/dashboard/calls/{pending['call_id']}")
    assert page.inner_text("#status") == "pending"
    # The form carries the session's CSRF token; the same form without it is refused.
    csrf = page.locator('form[action$="/cancel"] input[name="csrf"]').get_attribute("value")
    assert csrf
    forged = page.context.request.post(f"/dashboard/calls/{pending['call_id']}/cancel",
                                       form={"csrf": "0" * 32}, max_redirects=0)
    assert forged.status == 403
    page.click("#cancel")
    page.wait_for_url(f"**/dashboard/calls/{pending['call_id']}")
    _until(page, lambda: page.inner_text("#status") != "pending", within=60)
    assert page.inner_text("#status") == "terminated"
    _shot(page, "call-cancelled")
    page.context.close()


def test_a_workspace_token_sees_no_agents(deployed: Cluster, browser: Any) -> None:
    deployed.burst("workspace", "create", "dashother", check=True)
    token = deployed.burst("token", "create", "--workspace", "dashother", "--scope", "read",
                           check=True).stdout.strip()
    page = _sign_in(browser, deployed, token)
    assert page.inner_text("#workspace") == "dashother"
    assert page.locator("header a", has_text="Agents").count() == 0
    assert page.locator("#functions tr.fn").count() == 0  # the other workspace's apps: none
    page.goto("/dashboard/containers")
    assert page.locator("#containers tr.container").count() == 0
    with page.expect_response("**/dashboard/agents") as resp:
        page.goto("/dashboard/agents")
    assert resp.value.status == 403
    assert "operator" in page.inner_text("#error")
    page.goto("/dashboard/calls")
    assert page.locator("#calls tr.call").count() == 0
    page.context.close()


def test_the_web_endpoint_port_serves_no_dashboard(deployed: Cluster) -> None:
    state = json.loads((deployed.home / "cluster.json").read_text())
    port = next(p for p in state["parts"] if p["name"] == "gateway")["ports"]["web"]
    web = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(web.rstrip("/") + "/dashboard", timeout=30) as r:
            body = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    assert status == 404 and "Sign in" not in body
