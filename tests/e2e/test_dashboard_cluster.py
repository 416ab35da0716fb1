"""The dashboard and `status` of a real three-node forest (a registry and three node
processes), in Debian's headless Chromium: three nodes with their status reports, the
streams at R3, the same cluster view from every node, its counts the sums of the nodes'
/metrics; a node killed shows as down and
silent, and comes back. The screenshots are kept in test-artifacts/;
NIMSFOREST_DOCS_SCREENSHOT=1 also makes docs/dashboard.png of the three nodes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from nimsforest.forest import demo_config_path
from tests.api.test_ui_browser import ARTIFACTS, CHROMEDRIVER, CHROMIUM, browser  # noqa: F401
from tests.e2e.conftest import Forest
from tests.e2e.test_cluster import wait_cluster
from tests.support import NodeProcess, eventually

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="Debian's chromium and chromium-driver are missing: run "
                       "`make browser-deps`"),
]


def metric(node: NodeProcess, name: str, kind: str, component: str) -> float:
    """A component's counter on one node's /metrics (0 when it has none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(node.api_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name.endswith("_total")
                       and s.labels == {"kind": kind, "name": component})
    return 0.0


def reporting(url: str) -> dict[str, bool]:
    doc = httpx.get(url + "/api/v1/status", timeout=5).json()
    return {n["node"]: n["reporting"] for n in doc["nodes"]}


async def test_three_nodes_on_the_page_one_killed_and_back(forest: Forest, browser) -> None:  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def start(name: str, host: str, zone: str, extra: list[str] | None = None) -> NodeProcess:
        node = forest.node(name, host, start=False, extra=extra)
        node.env["NIMSFOREST_ZONE"] = zone
        return node.start()

    n1 = start("n1", "127.0.0.1", "a", ["--forest-config", str(demo_config_path())])
    await n1.wait_healthy(90)
    n2 = start("n2", "127.0.0.2", "b")
    n3 = start("n3", "127.0.0.3", "c")
    await n2.wait_healthy(90)
    await n3.wait_healthy(90)
    await wait_cluster(n1, 3, 3, timeout=120)

    # every node answers with the same cluster: three nodes reporting, their zones
    for node in (n1, n2, n3):
        doc = httpx.get(node.api_url + "/api/v1/status", timeout=5).json()
        assert doc["scope"] == "cluster" and doc["node"] == node.name
        assert {n["node"]: n["zone"] for n in doc["nodes"]} == {"n1": "a", "n2": "b", "n3": "c"}
        assert all(n["reporting"] for n in doc["nodes"]), doc["nodes"]
        qualify = next(c for c in doc["components"] if c["name"] == "qualify")
        assert qualify["state"] == "running" and len(qualify["nodes"]) == 3

    # the page open on n1 (its leaf tail listening) before an event goes through
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(n1.api_url + "/ui")
    wait.until(lambda b: "listening" in b.find_element(By.ID, "tail-status").text)
    # an event through the demo: status's counts are the sums of the nodes' /metrics
    payload = (demo_config_path().parent / "payloads" / "contact_created.json").read_bytes()
    r = httpx.post(n2.api_url + "/webhooks/contacts", content=payload, timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text

    def agree() -> bool:
        ins = sum(metric(n, "nimsforest_component_events_in", "nim", "qualify")
                  for n in (n1, n2, n3))
        outs = sum(metric(n, "nimsforest_component_events_out", "nim", "qualify")
                   for n in (n1, n2, n3))
        comps = httpx.get(n3.api_url + "/api/v1/nims", timeout=5).json()
        return (ins, outs) == (comps[0]["events_in"], comps[0]["events_out"]) and ins == 1 \
            and outs == 2  # lead.qualified and its Humus entry

    await eventually(agree, timeout=30, what="status and the nodes' /metrics agree")


    def row(name: str) -> str:
        rows = browser.find_elements(By.CSS_SELECTOR, f'#nodes tr[data-node="{name}"]')
        return rows[0].text if rows else ""

    for name, zone in (("n1", "a"), ("n2", "b"), ("n3", "c")):
        wait.until(lambda b, name=name, zone=zone: f" {zone} " in row(name) and "MiB" in row(name))
    for stream in ("RIVER", "WIND", "KV_SOIL", "KV_STATUS"):
        wait.until(lambda b, s=stream: b.find_element(
            By.CSS_SELECTOR, f'#streams tr[data-stream="{s}"] td:nth-child(2)').text == "3")
    wait.until(lambda b: "on 3 node(s)" in b.find_element(By.ID, "forest-scope").text)
    # every step's counts, the webhook source's included (it ran on n2: its report)
    for card in ("source/contacts", "tree/contacts", "treehouse/scoring", "nim/qualify"):
        wait.until(lambda b, card=card: "in 1 " in b.find_element(
            By.CSS_SELECTOR, f'[data-component="{card}"] .counts').text)
    # each component's consumer lag, read by the nodes' NATS observers: all caught up
    wait.until(lambda b: b.find_element(
        By.CSS_SELECTOR, '[data-component="nim/qualify"] .lag').get_attribute("data-lag") == "0")
    wait.until(lambda b: "no dead letter" in b.find_element(By.ID, "dead-rows").text)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#tail li[data-subject="lead.qualified"]'))
    wait.until(lambda b: all(td.text == "yes" for td in b.find_elements(
        By.CSS_SELECTOR, "#streams td:nth-child(4)")))  # every replica caught up
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-3-nodes.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("NIMSFOREST_DOCS_SCREENSHOT"):  # the README's picture: three nodes
        shutil.copy(shot, Path(__file__).parents[2] / "docs" / "dashboard.png")

    # n3 killed: the page says it is down (a peer offline, its report silent)
    n3.kill()
    def state_cell(name: str) -> str:
        cell = browser.find_element(By.CSS_SELECTOR, f'#nodes tr[data-node="{name}"] td:nth-child(2)')
        return cell.get_attribute("class") or ""

    wait.until(lambda b: "silent" in row("n3") and "bad" in state_cell("n3"))
    assert reporting(n1.api_url) == {"n1": True, "n2": True, "n3": False}
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard-node-down.png"))

    # and back
    n3.start()
    await n3.wait_healthy(90)
    wait.until(lambda b: "s ago" in row("n3") and "silent" not in row("n3")
               and "bad" not in state_cell("n3"))
    assert reporting(n2.api_url) == {"n1": True, "n2": True, "n3": True}
