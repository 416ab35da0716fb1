"""/docs and /redoc load every asset from the node itself: they work without internet."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from nimsforest.api.app import create_app


def no_snapshot():  # the documentation pages never read the node's state
    raise AssertionError("the docs read the node's snapshot")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_their_assets_from_the_node(page: str) -> None:
    client = TestClient(create_app(no_snapshot))
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', html.text)
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, html.text
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert len(resp.content) > 1000 or asset.endswith(".png"), asset
    assert "http" not in html.text, "a page that names another origin needs the internet"
    assert "openapi.json" in html.text
    assert client.get("/openapi.json").json()["info"]["title"] == "NimsForest node API"
