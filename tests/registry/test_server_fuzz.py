"""Random request bodies never make the server fail (5xx) or answer without a message."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.registry.conftest import RegistryProcess

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "name",
    "cluster_address",
    "address",
    "port",
    "client_address",
    "monitor_url",
    "api_url",
    "node_id",
    "metadata",
    "ttl_seconds",
    "registered_at",
    "create_index",
]
registrations = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.one_of(json_values, registrations))
def test_random_registrations_get_2xx_or_4xx_with_a_message(
    registry_server: RegistryProcess, service: str, payload: object
) -> None:
    resp = httpx.post(
        f"{registry_server.url}/v1/services/{service}/nodes", json=payload, timeout=10
    )
    assert resp.status_code in (200, 201, 400, 409, 413, 422), resp.text
    if resp.status_code >= 400:
        message = resp.json()["error"]
        assert isinstance(message, str) and message.endswith(".")
    else:
        assert resp.json()["create_index"] >= 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.text(max_size=8), wait=st.text(max_size=8), name=st.text(min_size=1, max_size=20))
def test_random_query_parameters_and_names_never_fail_the_server(
    registry_server: RegistryProcess, service: str, index: str, wait: str, name: str
) -> None:
    with httpx.Client(base_url=registry_server.url, timeout=10) as http:
        listed = http.get(
            f"/v1/services/{service}/nodes", params={"index": index, "wait": wait[:2]}
        )
        beat = http.put(f"/v1/services/{service}/nodes/{quote(name, safe='')}/heartbeat")
    for resp in (listed, beat):
        assert resp.status_code < 500, resp.text
