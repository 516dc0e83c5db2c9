"""The web console on the control plane's admin port, against a meshed system
(issue 23 acceptance).

One module-scoped system serves every test here: the servers of
test_istio_dashboards (`reviews` over HTTP: 200, 404, 503; `greeter` over
gRPC: OK, NOT_FOUND), a `productpage` Mesh calling them through a real control
plane started with `--prometheus-url`, and a real Prometheus (Debian's)
scraping every side's metrics. The JSON endpoints are checked first; then the
pages in a real headless Chromium (Debian's `chromium`, driven by Playwright;
no browser is downloaded): the graph draws the services and edges, a NACK shows
on the status page with its reason, and the simulate form answers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from browser import BrowserMissing, chromium
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from mesh_control_plane.translate import CLUSTER
from meshlab import LocalMesh, service_entry
from test_istio_dashboards import GREETER, REVIEWS, configure, serve_system, traffic
from test_telemetry_e2e import Prometheus

from proxyless_mesh import Mesh

PRODUCTPAGE = "wl:default/productpage"
EDGES = {
    (PRODUCTPAGE, f"svc:{REVIEWS}"),
    (f"svc:{REVIEWS}", "wl:default/reviews-v1"),
    (PRODUCTPAGE, f"svc:{GREETER}"),
    (f"svc:{GREETER}", "wl:default/greeter-v1"),
}
STEP = 30.0  # seconds any one awaited event may take on a loaded machine


@dataclass
class Console:
    lab: LocalMesh
    admin: str  # http://HOST:PORT of the control plane's admin port
    reviews_port: int

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(f"{self.admin}{path}", params=params, timeout=10)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    workdir = tmp_path_factory.mktemp("console")
    lab = LocalMesh(workdir)
    prometheus = Prometheus(workdir)
    stop = threading.Event()
    try:
        with serve_system() as system:
            prometheus.start({"mesh": [f"127.0.0.1:{system.metrics_port}"]})
            configure(lab, system, ["--prometheus-url", f"http://{prometheus.address}"])
            labels = {"app": "productpage", "version": "v1"}
            bootstrap = lab.bootstrap("productpage-1", labels=labels)
            with Mesh.from_bootstrap(bootstrap, telemetry=system.config) as mesh:
                worker = threading.Thread(target=traffic, args=(mesh, stop))
                worker.start()
                try:
                    yield Console(lab, f"http://{lab.admin_address}", system.reviews_port)
                finally:
                    stop.set()
                    worker.join(30)
    finally:
        prometheus.stop()
        lab.close()


def settled_graph(console: Console) -> dict[str, Any]:
    """/api/graph once all four edges have rates (Prometheus needs two scrapes
    of each series; it pushes nothing, so its answers are polled)."""
    deadline = time.monotonic() + STEP
    while True:
        answer = console.get("/api/graph", window="1m")
        assert answer.status_code == 200, answer.text
        graph: dict[str, Any] = answer.json()
        if {(e["source"], e["target"]) for e in graph["edges"]} >= EDGES:
            return graph
        assert time.monotonic() < deadline, graph
        time.sleep(0.25)


def test_graph_json_has_the_workloads_services_and_their_rates(console: Console) -> None:
    graph = settled_graph(console)
    assert {(n["id"], n["kind"]) for n in graph["nodes"]} == {
        (PRODUCTPAGE, "workload"),
        (f"svc:{REVIEWS}", "service"),
        (f"svc:{GREETER}", "service"),
        ("wl:default/reviews-v1", "workload"),
        ("wl:default/greeter-v1", "workload"),
    }
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    for pair in EDGES:
        edge = edges[pair]
        assert edge["rps"] > 0 and edge["p99_ms"] is not None and edge["p99_ms"] > 0, edge
        # this system runs without the CA: the servers report plaintext
        assert edge["mtls"] == 0.0, edge
    assert edges[(PRODUCTPAGE, f"svc:{GREETER}")]["protocol"] == "grpc"
    # Each traffic round sends 2 x 200, 404, 503 (1 error in 4: a 404 is not
    # one) and gRPC OK, NOT_FOUND (1 in 2). rate() leaves out each series'
    # first scraped value, so the ratio is off while the series are young;
    # it converges to the traffic's as rounds add up (tolerance 0.06, polled).
    expected = {f"svc:{REVIEWS}": 0.25, f"svc:{GREETER}": 0.5}
    deadline = time.monotonic() + STEP
    while True:
        rates = {
            e["target"]: e["error_rate"]
            for e in settled_graph(console)["edges"]
            if e["source"] == PRODUCTPAGE
        }
        if all(abs(rates[s] - share) < 0.06 for s, share in expected.items()):
            break
        assert time.monotonic() < deadline, (rates, expected)
        time.sleep(0.5)
    assert edges[(f"svc:{REVIEWS}", "wl:default/reviews-v1")]["reporter"] == "destination"


def test_simulate_json_names_the_endpoint(console: Console) -> None:
    answer = console.get("/simulate", method="GET", url=f"http://{REVIEWS}:9080/ok")
    assert answer.status_code == 200, answer.text
    [cluster] = answer.json()["clusters"]
    assert [e["address"] for e in cluster["endpoints"]] == [f"127.0.0.1:{console.reviews_port}"]


class RefusingClient:
    """A real ADS stream (grpcio, to the real control plane) of a client that
    accepts the first clusters it is sent and refuses every later version with
    `reason`, as the library's client does a resource it cannot decode (its
    NACK keeps version_info at the last version it accepted)."""

    def __init__(self, xds: str, node_id: str, reason: str) -> None:
        self.reason = reason
        self.nacked = threading.Event()
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self._channel = grpc.insecure_channel(xds)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._responses = stub.StreamAggregatedResources(iter(self._requests.get, None))
        node = base_pb2.Node(id=node_id, user_agent_name="console-test")
        self._requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        self.acked = threading.Event()
        self._thread = threading.Thread(target=self._answer, daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        accepted = ""
        try:
            for response in self._responses:
                request = discovery_pb2.DiscoveryRequest(
                    type_url=CLUSTER, response_nonce=response.nonce
                )
                if not accepted:
                    accepted = request.version_info = response.version_info
                    self._requests.put(request)
                    self.acked.set()
                    continue
                request.version_info = accepted
                request.error_detail.CopyFrom(status_pb2.Status(code=3, message=self.reason))
                self._requests.put(request)
                self.nacked.set()
        except grpc.RpcError:
            pass  # cancelled by close()

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()
        self._channel.close()
        self._thread.join(5)


# -- in the browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's) for the module, with an empty profile."""
    try:
        with chromium(timeout=STEP) as context:
            yield context
    except BrowserMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        page.close()
    assert not errors, errors  # the console's script threw


def test_graph_page_draws_the_services_and_edges(console: Console, page: Any) -> None:
    settled_graph(console)
    page.goto(f"{console.admin}/console/graph")
    for source, target in sorted(EDGES):
        edge = page.locator(f'g.edge[data-source="{source}"][data-target="{target}"]')
        edge.wait_for()
        assert "rps" in edge.locator("text.label").text_content()
    for node, name in (
        (PRODUCTPAGE, "productpage"),
        (f"svc:{REVIEWS}", "reviews"),
        (f"svc:{GREETER}", "greeter"),
        ("wl:default/reviews-v1", "reviews-v1"),
        ("wl:default/greeter-v1", "greeter-v1"),
    ):
        assert page.locator(f'g.node[data-id="{node}"] text.name').text_content() == name
    assert page.locator("g.node.service polygon").count() == 2  # services drawn as diamonds
    assert page.locator("#message").text_content() == ""


def test_status_page_shows_a_nack_and_its_reason_after_a_bad_push(
    console: Console, page: Any
) -> None:
    reason = "cluster outbound|9080||extra.default.svc.cluster.local: refused by this client"
    client = RefusingClient(console.lab.xds_address, "refusing-1", reason)
    try:
        assert client.acked.wait(STEP)
        page.goto(f"{console.admin}/console/status")
        row = page.locator('tr.client[data-node="refusing-1"]')
        row.locator('li.ack[data-type="CDS"]').wait_for()
        # The push the client refuses: one more service in the config directory.
        console.lab.write_config(
            "extra.yaml",
            service_entry("extra.default.svc.cluster.local", 9080, [("127.0.0.1", 9, {})]),
        )
        assert client.nacked.wait(STEP)
        nack = row.locator('li.nack[data-type="CDS"]')
        nack.wait_for()  # the page refreshes every 2 s
        assert nack.locator(".reason").text_content() == reason
        productpage = page.locator('tr.client[data-node="productpage-1"]')
        assert productpage.locator("li.ack").count() == 4  # the library client ACKed all
    finally:
        client.close()
        (console.lab.config_dir / "extra.yaml").unlink()


def test_simulate_form_answers(console: Console, page: Any) -> None:
    page.goto(f"{console.admin}/console/simulate")
    page.fill('input[name="url"]', f"http://{REVIEWS}:9080/ok")
    page.fill('input[name="from"]', "default/productpage")
    page.click('button[type="submit"]')
    endpoint = page.locator("#result tr.row-endpoint td")
    endpoint.wait_for()
    assert endpoint.text_content().startswith(f"127.0.0.1:{console.reviews_port}")
    assert page.locator("#result tr.row-outcome td").text_content()
    # a malformed question is answered with the control plane's reason
    page.fill('input[name="from"]', "productpage")
    page.click('button[type="submit"]')
    page.locator("#message:not(:empty)").wait_for()
    assert "NAMESPACE/SERVICE_ACCOUNT" in page.locator("#message").text_content()
    assert page.locator("#result tr").count() == 0


BAD_FIELD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - frobnicate: true
    route: [{destination: {host: reviews.default.svc.cluster.local}}]
"""


def test_status_page_shows_config_errors_by_file_kind_name_field(
    console: Console, page: Any
) -> None:
    page.goto(f"{console.admin}/console/status")
    page.locator('tr.client[data-node="productpage-1"]').wait_for()
    assert page.locator("#config-errors").is_hidden()
    console.lab.write_config("broken.yaml", BAD_FIELD)
    try:
        row = page.locator("#errors tr.config-error").filter(has_text="broken.yaml")
        row.wait_for()  # the page refreshes every 2 s
        cells = {
            key: row.locator(f'td[data-key="{key}"]').text_content()
            for key in ("file", "kind", "name", "field", "message")
        }
        assert cells == {
            "file": "broken.yaml",
            "kind": "VirtualService",
            "name": "default/broken",
            "field": "spec.http[0].frobnicate",
            "message": "unknown field (IST0106)",
        }
    finally:
        (console.lab.config_dir / "broken.yaml").unlink()
    page.locator("#config-errors").wait_for(state="hidden")  # the next good load clears it


def test_status_page_names_the_xds_protocol_when_the_record_has_it(
    console: Console, page: Any
) -> None:
    """`protocol` (sotw/delta) is shown as /status carries it: the real answer
    (this client is on SotW), and the same answer with the key changed."""

    def with_protocol(route: Any) -> None:
        status = route.fetch().json()
        for client in status["clients"]:
            client["protocol"] = "delta"
        route.fulfill(json=status)

    def is_status(url: str) -> bool:  # /status, not the page /console/status
        return urlsplit(url).path == "/status"

    page.route(is_status, with_protocol)
    page.goto(f"{console.admin}/console/status")
    kind = page.locator('tr.client[data-node="productpage-1"] td').nth(1)
    kind.wait_for()
    assert kind.text_content() == "MESH · delta"
    page.unroute(is_status)
    page.reload()
    page.locator('tr.client[data-node="productpage-1"]').wait_for()
    assert kind.text_content() == "MESH · sotw"
