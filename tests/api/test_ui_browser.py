"""The dashboard at /ui in a real headless Chromium (Debian's chromium and chromium-driver,
installed by `make browser-deps`), against one real demo node: the page shows the node and
its streams, an event posted appears in the leaf tail, a Soil key opens; a dead letter shows
in its pane and its Replay button puts its event back to its component (through the API,
with the page's cookie). The node has an API token: the page signs in first. The
screenshot is kept in test-artifacts/ (NIMSFOREST_ARTIFACTS to put it elsewhere)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nimsforest.forest import demo_config_path
from tests.support import NodeProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("NIMSFOREST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
TOKEN = "ui-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAYLOAD = json.loads((demo_config_path().parent / "payloads" / "contact_created.json").read_text())

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian's chromium and chromium-driver are missing: run `make browser-deps`",
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("ui")
    proc = NodeProcess("standalone", root / "data", extra=["--demo"],
                       env={"NIMSFOREST_API_TOKEN": TOKEN}).start()
    try:
        asyncio.run(proc.wait_healthy())
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1300", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _on_the_page(node: NodeProcess, browser) -> None:  # noqa: ANN001
    """The dashboard open in `browser`, signed in (a test run alone starts signed out)."""
    from selenium.webdriver.common.by import By

    if "/ui" in browser.current_url and not browser.find_elements(By.NAME, "token"):
        return
    browser.get(node.api_url + "/ui")
    if browser.find_elements(By.NAME, "token"):
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form button").click()


def _text(browser, css: str) -> str | None:  # noqa: ANN001
    """The text `css` finds on the page now, read in one step in the page (the panes are
    drawn again as the page updates, so an element found first and read later can be gone)."""
    return browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css)


def _until_text(browser, css: str, *needles: str, timeout: float = 30) -> str:  # noqa: ANN001
    """Wait until what `css` finds shows every one of `needles`; its text, or an assertion
    naming what it showed last."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list[str | None] = [None]

    def shown(b) -> str | bool:  # noqa: ANN001
        seen[0] = text = _text(b, css)
        return text if text is not None and all(n in text for n in needles) else False

    try:
        return WebDriverWait(browser, timeout).until(shown)
    except TimeoutException:
        raise AssertionError(f"{css} never showed {needles}; it last showed {seen[0]!r}") from None


def _click(browser, css: str) -> None:  # noqa: ANN001
    """Click what `css` finds, found again if the page drew it again meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def clicked(b) -> bool:  # noqa: ANN001
        b.find_element(By.CSS_SELECTOR, css).click()
        return True

    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(clicked)


def test_the_dashboard_shows_the_cluster_the_leaves_and_soil(node: NodeProcess, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(node.api_url + "/ui")
    # the node has a token: the page asks for it once, then keeps it in a cookie
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button").click()

    # the cluster: this node, healthy, and every stream with its leader
    wait.until(ec.text_to_be_present_in_element((By.ID, "node-name"), "n1"))
    wait.until(ec.text_to_be_present_in_element((By.ID, "node-status"), "healthy"))
    # the node's own status report: CPU, memory, when it reported (the STATUS bucket)
    _until_text(browser, '#nodes tr[data-node="n1"]', "MiB", "s ago", "%")
    for stream in ("RIVER", "WIND", "HUMUS", "KV_SOIL"):
        _until_text(browser, f'#streams tr[data-stream="{stream}"]', "n1")  # its leader
    # the forest: the demo's four components, running
    for comp in ("source/contacts", "tree/contacts", "treehouse/scoring", "nim/qualify"):
        _until_text(browser, f'[data-component="{comp}"]', "running")
    # each card names the components its output feeds (the graph's edges)
    edges = {"source/contacts": "→ tree contacts", "tree/contacts": "→ treehouse scoring",
             "treehouse/scoring": "→ nim qualify"}
    for comp, edge in edges.items():
        _until_text(browser, f'[data-component="{comp}"]', edge)

    # a posted event appears in the leaf tail, live
    wait.until(ec.text_to_be_present_in_element((By.ID, "tail-status"), "listening on wind.>"))
    resp = httpx.post(node.api_url + "/webhooks/contacts", json=PAYLOAD, timeout=5)
    assert resp.status_code == 200, resp.text
    qualified = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, '#tail li[data-subject="lead.qualified"]')))
    assert "c-1001" in qualified.text and "nim:qualify" in qualified.text
    qualified.click()  # opens its JSON (the tail adds rows and never draws one again)
    assert '"pursue": true' in qualified.find_element(By.CSS_SELECTOR, "pre").text

    # the Soil key the nim wrote shows up (the page watches Soil) and opens
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, '#soil-keys li[data-key="c-1001"]')))
    _click(browser, '#soil-keys li[data-key="c-1001"]')
    value = _until_text(browser, "#soil-value", "c-1001")
    assert json.loads(value)["contact_id"] == "c-1001"
    _until_text(browser, "#soil-entry", "Humus entry #1")
    # the counts the page shows are those of /api/v1/status
    _until_text(browser, '[data-component="nim/qualify"] .counts', "in 1 ")

    # the cluster pane follows too: the three leaves are in WIND's message count
    wait.until(lambda b: _text(b, '#streams tr[data-stream="WIND"] td:nth-child(6)') == "3")
    # a click on the node: the forest as that node alone runs it (?node=n1), again: all
    _click(browser, '#nodes tr[data-node="n1"]')
    wait.until(ec.text_to_be_present_in_element((By.ID, "forest-scope"), "as node n1 alone"))
    assert "node=n1" in browser.current_url
    _click(browser, '#nodes tr[data-node="n1"]')
    wait.until(ec.text_to_be_present_in_element((By.ID, "forest-scope"), "on 1 node(s)"))
    # the audit log: the demo forest seeded from forest.yaml at start-up
    _until_text(browser, "#audit-rows tr", "seed", "4 components")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # docs/dashboard.png: tests/e2e/test_dashboard_cluster.py


LETTER_TREE = {"name": "picky", "watches": "river.picky", "publishes": "picky.took",
               "max_deliver": 1,
               "script": 'function process(i) if i.bad then error("bad input") end return i end'}


def test_a_dead_letter_is_replayed_from_the_page(node: NodeProcess, browser) -> None:
    """A tree that fails an event gives it up (max_deliver 1); the letter appears in the
    pane with its reason and, on a click, its event as JSON; the tree is fixed (PUT through
    the API); Replay on the page puts the event back: the tree takes it (its leaf in the
    tail) and the letter is gone. The page's POST carries the cookie and the page's header:
    the same POST without the header, or from another origin, is refused."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def click(css: str) -> None:
        _click(browser, css)  # the pane is drawn again when a letter comes or goes

    api = httpx.Client(base_url=node.api_url, headers=AUTH, timeout=15)
    assert api.post("/api/v1/trees", json=LETTER_TREE).status_code in (201, 202)
    wait = WebDriverWait(browser, 30)
    _on_the_page(node, browser)
    assert api.post("/api/v1/river/picky", json={"bad": True, "id": "d-7"}).status_code == 202

    wait.until(ec.text_to_be_present_in_element((By.ID, "dead-rows"), "bad input"))
    row, seq = browser.execute_script(  # read in one step: the pane is drawn again as it updates
        'const r = document.querySelector("#dead tr.letter"); return [r.innerText, r.dataset.dead];')
    assert "tree picky" in row, row
    wait.until(ec.text_to_be_present_in_element(
        (By.CSS_SELECTOR, '[data-dead-component="tree/picky"]'), "tree picky: 1"))
    click(f'#dead tr[data-dead="{seq}"]')  # its event as JSON
    body = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#dead tr.letter-body pre")))
    event = json.loads(body.text)
    assert event.get("data", event) == {"bad": True, "id": "d-7"}, event

    # the page's cookie alone does not make a change: the header is needed, and same origin
    cookie = {"nimsforest_token": TOKEN}
    bare = httpx.post(f"{node.api_url}/api/v1/dead/{seq}/replay", cookies=cookie, timeout=5)
    assert bare.status_code == 401, bare.text
    other = httpx.post(f"{node.api_url}/api/v1/dead/{seq}/replay", cookies=cookie, timeout=5,
                       headers={"X-NimsForest-Page": "1", "Origin": "http://evil.example"})
    assert other.status_code == 401, other.text
    # and any change a browser sends from a page of another site is refused, token or not
    evil = httpx.post(f"{node.api_url}/api/v1/dead/{seq}/replay", timeout=5,
                      headers={**AUTH, "Origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.json()["error"]

    fixed = {**LETTER_TREE, "script": "function process(i) return {id = i.id, fixed = true} end"}
    out = api.put("/api/v1/trees/picky", json=fixed)
    assert out.status_code == 200 and out.json()["applied"], out.text
    assert [r["node"] for r in out.json()["component"]["nodes"]] == ["n1"]  # the cluster view's
    # one component, cluster-wide with its settings, or one node's; an unknown node is a 404
    got = api.get("/api/v1/trees/picky").json()
    assert got["spec"]["code"] == fixed["script"] and got["state"] == "running" and got["nodes"]
    assert api.get("/api/v1/trees/picky", params={"node": "n1"}).json()["name"] == "picky"
    nowhere = api.get("/api/v1/trees/picky", params={"node": "n9"})
    assert nowhere.status_code == 404 and "n9" in nowhere.json()["error"]
    wait.until(ec.text_to_be_present_in_element((By.ID, "tail-status"), "listening"))
    click(f'#dead tr[data-dead="{seq}"] button.replay')
    wait.until(ec.text_to_be_present_in_element((By.ID, "dead-status"), f"#{seq} replayed"))
    took = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, '#tail li[data-subject="picky.took"]')))
    assert "d-7" in took.text and "fixed" in took.text
    wait.until(ec.text_to_be_present_in_element((By.ID, "dead-rows"), "no dead letter"))
    # the replay is in the audit log, by the page's client
    records = api.get("/api/v1/audit", params={"limit": 5}).json()
    assert any(r["action"] == "replay" and r["ok"] and r["name"] == "picky" for r in records)

    # "Replay all" of a component: two more letters, one click
    api.put("/api/v1/trees/picky", json=LETTER_TREE).raise_for_status()
    for i in (8, 9):
        api.post("/api/v1/river/picky", json={"bad": True, "id": f"d-{i}"}).raise_for_status()
    wait.until(ec.text_to_be_present_in_element(
        (By.CSS_SELECTOR, '[data-dead-component="tree/picky"]'), "tree picky: 2"))
    api.put("/api/v1/trees/picky", json=fixed).raise_for_status()
    click('[data-dead-component="tree/picky"] button.replay-all')
    wait.until(ec.text_to_be_present_in_element((By.ID, "dead-status"),
                                                "Replayed 2 dead letter(s) of tree 'picky'"))
    for i in (8, 9):
        wait.until(lambda b, i=i: any(f"d-{i}" in li.text for li in b.find_elements(
            By.CSS_SELECTOR, '#tail li[data-subject="picky.took"]')))
    api.close()


STUCK_TREE = {"name": "stuck", "watches": "river.stuck", "publishes": "stuck.took",
              "max_deliver": 100, "script": 'function process(i) error("not yet") end'}


def test_a_component_behind_shows_its_lag_until_it_catches_up(node: NodeProcess, browser) -> None:
    """A tree that keeps failing its events (retried, not given up) holds them unacknowledged:
    its card shows the consumer's lag, marked as behind; once it is fixed the events are
    handled and the lag goes back to 0, unmarked."""
    from selenium.webdriver.support.ui import WebDriverWait

    api = httpx.Client(base_url=node.api_url, headers=AUTH, timeout=15)
    assert api.post("/api/v1/trees", json=STUCK_TREE).status_code in (201, 202)
    _on_the_page(node, browser)
    for i in range(3):
        assert api.post("/api/v1/river/stuck", json={"id": f"s-{i}"}).status_code == 202
    card = '[data-component="tree/stuck"] .lag'

    def lag(b) -> tuple[int, bool, str] | None:  # noqa: ANN001
        """The card's lag, whether it is marked behind, and its text: read in one step (the
        cards are drawn again on every status update)."""
        found = b.execute_script(
            "const e = document.querySelector(arguments[0]);"
            "return e ? [Number(e.dataset.lag), e.classList.contains('behind'), e.innerText] : null;",
            card)
        return None if found is None else (found[0], found[1], found[2])

    WebDriverWait(browser, 30).until(
        lambda b: (got := lag(b)) is not None and got[:2] == (3, True) and "lag 3" in got[2])
    fixed = {**STUCK_TREE, "script": "function process(i) return i end"}
    assert api.put("/api/v1/trees/stuck", json=fixed).status_code == 200
    WebDriverWait(browser, 60).until(lambda b: (got := lag(b)) is not None and got[:2] == (0, False))
    api.close()


def test_the_dashboard_asks_for_the_token_when_the_node_has_one(tmp_path: Path) -> None:
    """Pure HTTP: the sign-in form, a wrong token refused, the right one sets the cookie."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from nimsforest.api.dashboard import Dashboard
    from nimsforest.control import TOKEN_COOKIE

    async def allowed() -> None:
        return None

    from nimsforest.control import RateLimited

    tries: list[str] = []

    def check_rate(client: str) -> None:
        tries.append(client)
        if len(tries) > 3:
            raise RateLimited("Too many changes from testclient; try again in 5 s.", retry_after=5)

    board = Dashboard(lambda: None, lambda: None, allowed, lambda t: t == "s3cret", True, check_rate)
    app = FastAPI()
    app.include_router(board.router())
    client = TestClient(app)
    first = client.get("/ui")
    assert first.status_code == 401 and 'name="token"' in first.text
    wrong = client.post("/ui/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not this node's API token" in wrong.text
    right = client.post("/ui/login", data={"token": "s3cret"}, follow_redirects=False)
    assert right.status_code == 303 and right.cookies[TOKEN_COOKIE] == "s3cret"
    assert "samesite=strict" in right.headers["set-cookie"].lower()
    client.cookies.set(TOKEN_COOKIE, "s3cret")
    page = client.get("/ui")
    assert page.status_code == 200 and "/ui/assets/app.js" in page.text
    # sign-ins are rate limited as changes are: a token is not guessed at speed
    client.post("/ui/login", data={"token": "guess"})
    limited = client.post("/ui/login", data={"token": "guess-again"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "5"
