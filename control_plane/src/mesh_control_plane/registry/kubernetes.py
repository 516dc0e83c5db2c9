"""The Kubernetes registry backend: Services and their EndpointSlices become the
mesh's services and instances, as Istio's Kubernetes registry does.

- A Service `<svc>` in namespace `<ns>` is the host `<svc>.<ns>.svc.<domain>`
  (domain `cluster.local` by default), with the Service's ports. A port's protocol
  is its `appProtocol` (`http`, `http2`, `kubernetes.io/h2c`, `grpc`, `tcp`), else
  the prefix of its name (`http-web`, `grpc`), Istio's rules. Istio would sniff a
  port that says neither; this mesh translates per protocol before any byte is
  sent, so such a port (and UDP, HTTPS, TLS ...) is left out, with a warning and
  in `status()`. ExternalName Services are not served (also listed there): declare
  a ServiceEntry for the name they alias. Headless Services are served like any
  other (EDS of their ready endpoints), and, as Kubernetes DNS and Istio do for
  StatefulSets, each endpoint with a hostname (the slice's `hostname`, set from
  the Pod's `spec.hostname` when its `spec.subdomain` names the Service) is also
  the host `<hostname>.<svc>.<ns>.svc.<domain>` with that one Pod.
- Each EndpointSlice endpoint (kubernetes.io/service-name) is an instance: ready is
  HEALTHY; not ready but serving and terminating (a Pod shutting down gracefully) is
  DRAINING, so clients finish with it; anything else is not an instance.
- The endpoint's Pod gives the labels (for subsets) and the ServiceAccount (the
  identity auto-mTLS expects); its Node's `topology.kubernetes.io/region` / `zone`
  and `topology.istio.io/subzone` labels give the locality (the slice's zone when
  the Node is unknown).
- A host the operator declared in a ServiceEntry of their own is theirs: the
  Service does not add another entry for it (as with Consul).
- A ServiceEntry with a `workloadSelector` is served by the ready Pods of its
  namespace whose labels match (as in Istio), on the entry's port numbers (or
  targetPorts); a Ready Pod being deleted is DRAINING.

Every collection is a `Reflector` (list + watch with bookmarks, resumed after a
dropped connection, listed again after a 410): a lost API server never empties the
mesh; the last known instances stay until it answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from mesh_control_plane.config.model import (
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    WorkloadEndpoint,
)
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.kube.reflector import Reflector, Reflectors
from mesh_control_plane.registry.hub import DynamicInstance

log = logging.getLogger(__name__)

__all__ = ["KubernetesRegistry", "KubernetesSettings", "port_protocol"]

T = TypeVar("T")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_REGION, _ZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"
_SUBZONE = "topology.istio.io/subzone"
_APP_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "kubernetes.io/h2c": "HTTP2",
    "grpc": "GRPC",
    "tcp": "TCP",
}
_NAME_PREFIXES = ("HTTP", "HTTP2", "GRPC", "TCP")


@dataclass(frozen=True)
class KubernetesSettings:
    domain: str = "cluster.local"
    namespaces: Sequence[str] = field(default_factory=tuple)  # empty: all namespaces
    watch_timeout: int = 300  # seconds a watch lasts before it is resumed
    token_audience: str = "proxyless-mesh"  # of ServiceAccount tokens the CA accepts
    backoff_initial: float = 0.2
    backoff_max: float = 10.0


@dataclass(frozen=True)
class _Service:
    ports: tuple[ServicePort, ...]
    skipped: tuple[str, ...]  # ports left out, with why
    headless: bool = False  # clusterIP None: per-Pod hosts


@dataclass(frozen=True)
class _Endpoint:
    address: str
    health: str  # HEALTHY | DRAINING
    pod: str  # namespace/name, or "" when the endpoint is not a Pod
    node: str
    zone: str
    hostname: str = ""  # a headless Service's per-Pod DNS label


@dataclass(frozen=True)
class _Slice:
    service: str  # namespace/name
    ports: tuple[tuple[str, int], ...]
    endpoints: tuple[_Endpoint, ...]


@dataclass(frozen=True)
class _Pod:
    labels: tuple[tuple[str, str], ...]
    service_account: str
    node: str
    address: str = ""  # status.podIP
    health: str = ""  # HEALTHY (Ready), DRAINING (Ready, being deleted), "" otherwise
    hostname: str = ""  # spec.hostname, when spec.subdomain names a Service
    subdomain: str = ""


def port_protocol(port: Mapping[str, Any]) -> str | None:
    """A Service port's mesh protocol (Istio's rules), or None when it names none
    this mesh carries."""
    if port.get("protocol", "TCP") != "TCP":
        return None  # UDP, SCTP
    app = str(port.get("appProtocol") or "")
    if app:
        return _APP_PROTOCOLS.get(app.lower())
    prefix = str(port.get("name") or "").split("-", 1)[0].upper()
    return prefix if prefix in _NAME_PREFIXES else None


def _service(obj: Mapping[str, Any]) -> _Service | None:
    spec = obj.get("spec") or {}
    if spec.get("type") == "ExternalName":
        # Istio serves it as a DNS alias; here a client would need a DNS cluster.
        alias = spec.get("externalName", "")
        why = f"not served: type ExternalName (an alias of {alias}; declare a ServiceEntry for it)"
        return _Service((), (why,))
    ports, skipped = [], []
    for port in spec.get("ports") or ():
        name, number = str(port.get("name") or ""), int(port["port"])
        protocol = port_protocol(port)
        if protocol is None:
            skipped.append(
                f"port {name or number} not served: no protocol the mesh carries "
                "(appProtocol or name)"
            )
            continue
        ports.append(ServicePort(number, protocol, name))
    return _Service(tuple(ports), tuple(skipped), spec.get("clusterIP") == "None")


def _endpoint_slice(obj: Mapping[str, Any]) -> _Slice | None:
    service = (obj["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType") not in ("IPv4", "IPv6"):
        return None
    ports = tuple(
        sorted(
            (str(p.get("name") or ""), int(p["port"]))
            for p in obj.get("ports") or ()
            if p.get("port") is not None
        )
    )
    endpoints = []
    for ep in obj.get("endpoints") or ():
        conditions = ep.get("conditions") or {}
        ready = conditions.get("ready") is not False  # unset means ready (the API's rule)
        serving = conditions.get("serving", ready) is not False
        terminating = conditions.get("terminating") is True
        if ready:
            health = "HEALTHY"
        elif serving and terminating:
            health = "DRAINING"
        else:
            continue
        ref = ep.get("targetRef") or {}
        pod = (
            f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref.get("kind") == "Pod" else ""
        )
        for address in (ep.get("addresses") or ())[:1]:  # the API: consumers use the first
            endpoints.append(
                _Endpoint(
                    address,
                    health,
                    pod,
                    str(ep.get("nodeName", "")),
                    str(ep.get("zone", "")),
                    str(ep.get("hostname") or ""),
                )
            )
    namespace = obj["metadata"]["namespace"]
    return _Slice(f"{namespace}/{service}", ports, tuple(endpoints))


def _pod(obj: Mapping[str, Any]) -> _Pod:
    spec = obj.get("spec") or {}
    labels = obj["metadata"].get("labels") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    health = ""
    if ready and status.get("phase") == "Running":
        health = "DRAINING" if obj["metadata"].get("deletionTimestamp") else "HEALTHY"
    return _Pod(
        tuple(sorted(labels.items())),
        str(spec.get("serviceAccountName") or "default"),
        str(spec.get("nodeName") or ""),
        str(status.get("podIP") or ""),
        health,
        str(spec.get("hostname") or ""),
        str(spec.get("subdomain") or ""),
    )


def _node_locality(obj: Mapping[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    parts = (labels.get(_REGION, ""), labels.get(_ZONE, ""), labels.get(_SUBZONE, ""))
    return "/".join(parts).rstrip("/")


class KubernetesRegistry:
    """Watches Services, EndpointSlices, Pods and Nodes; a `RegistrySource`."""

    def __init__(
        self,
        connection: KubeConnection,
        settings: KubernetesSettings | None = None,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.connection = connection
        self.settings = settings or KubernetesSettings()
        self.on_change = on_change
        self.on_hosts_change: Callable[[], None] = lambda: None
        """Called when Services come, go or change ports: a config that named a
        host no Service had yet may load now (the control plane reloads)."""
        # One watch per kind, or per kind and namespace with --kube-namespace (less
        # to list and watch, and RBAC that can be namespaced). Nodes are cluster-wide.
        self.services = self._per_namespace("/api/v1/services", _service, self._services_changed)
        self.slices = self._per_namespace(
            "/apis/discovery.k8s.io/v1/endpointslices", _endpoint_slice
        )
        self.pods = self._per_namespace("/api/v1/pods", _pod, self._instances_changed)
        self.nodes = self._reflector("/api/v1/nodes", _node_locality, self._instances_changed)
        self.watching = Reflectors(
            connection, (*self.services, *self.slices, *self.pods, self.nodes)
        )
        self._entries: tuple[ServiceEntry, ...] | None = None  # cache, reset on change
        # Each Service's entry, kept while its Service and slices are the same (and
        # no Pod or Node changed): an endpoint change rebuilds one entry, not all.
        self._built: dict[str, tuple[_Service, tuple[_Slice, ...], tuple[ServiceEntry, ...]]] = {}
        self._pods: dict[str, _Pod] = {}  # all namespaces', while entries are built
        self._instances: tuple[DynamicInstance, ...] | None = None  # cache of instances()
        self._warned: set[str] = set()

    def _reflector(
        self,
        path: str,
        transform: Callable[[Any], T | None],
        on_change: Callable[[], None] | None = None,
    ) -> Reflector[T]:
        s = self.settings
        return Reflector(
            path,
            transform,
            on_change or self._changed,
            watch_timeout=s.watch_timeout,
            backoff_initial=s.backoff_initial,
            backoff_max=s.backoff_max,
        )

    def _per_namespace(
        self,
        path: str,
        transform: Callable[[Any], T | None],
        on_change: Callable[[], None] | None = None,
    ) -> tuple[Reflector[T], ...]:
        """`/api/v1/pods` -> that, or `/api/v1/namespaces/<ns>/pods` for each namespace."""
        if not self.settings.namespaces:
            return (self._reflector(path, transform, on_change),)
        base, _, kind = path.rpartition("/")
        return tuple(
            self._reflector(f"{base}/namespaces/{ns}/{kind}", transform, on_change)
            for ns in self.settings.namespaces
        )

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        await self.watching.start()

    async def wait_synced(self) -> None:
        await self.watching.wait_synced()

    async def stop(self) -> None:
        await self.watching.stop()

    # -- RegistrySource -----------------------------------------------------------

    def instances(self) -> Sequence[DynamicInstance]:
        """Ready Pods, for ServiceEntries whose `workloadSelector` selects them (as
        Istio does; Services bring their own endpoints, see service_entries)."""
        if self._instances is None:
            self._instances = tuple(
                DynamicInstance(key.split("/", 1)[0], self._pod_instance(pod))
                for key, pod in sorted(_merged(self.pods).items())
                if pod.address and pod.health and self._wanted(key.split("/", 1)[0])
            )
        return self._instances

    def _pod_instance(self, pod: _Pod) -> WorkloadEndpoint:
        return WorkloadEndpoint(
            address=pod.address,
            labels=dict(pod.labels),
            locality=self.nodes.items.get(pod.node, "") if pod.node else "",
            service_account=pod.service_account,
            health=pod.health,
        )

    def service_entries(self, config: MeshConfig) -> Sequence[ServiceEntry]:
        declared = {h for entry in config.service_entries for h in entry.hosts}
        return [e for e in self._all_entries() if e.hosts[0] not in declared]

    def status(self) -> Mapping[str, Any]:
        skipped = {
            key: list(svc.skipped) for key, svc in _merged(self.services).items() if svc.skipped
        }
        return {
            "server": self.connection.server,
            "services": sum(len(r.items) for r in self.services),
            "stale": self.watching.failing(),
            "watches": {r.path: r.status() for r in self.watching.reflectors},
            "skipped_ports": skipped,
        }

    # -- mapping ------------------------------------------------------------------

    def _changed(self) -> None:
        self._entries = None
        self.on_change()

    def _instances_changed(self) -> None:
        """Pods give labels and identities, Nodes localities: any entry may change."""
        self._built.clear()
        self._instances = None
        self._changed()

    def _services_changed(self) -> None:
        self._changed()
        self.on_hosts_change()

    def _wanted(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def _all_entries(self) -> tuple[ServiceEntry, ...]:
        if self._entries is None:
            self._entries = self._build_entries()
        return self._entries

    def _build_entries(self) -> tuple[ServiceEntry, ...]:
        by_service: dict[str, list[_Slice]] = {}
        for slice_ in _merged(self.slices).values():
            by_service.setdefault(slice_.service, []).append(slice_)
        entries: list[ServiceEntry] = []
        services = _merged(self.services)
        self._pods = _merged(self.pods)
        built: dict[str, tuple[_Service, tuple[_Slice, ...], tuple[ServiceEntry, ...]]] = {}
        for key in sorted(services):
            namespace, name = key.split("/", 1)
            service = services[key]
            if not self._wanted(namespace):
                continue
            self._warn_skipped(key, service)
            if not service.ports:
                continue
            slices = tuple(by_service.get(key, ()))
            known = self._built.get(key)
            if known is not None and known[0] == service and known[1] == slices:
                made = known[2]
            else:
                entry = ServiceEntry(
                    meta=Meta("ServiceEntry", f"k8s-{name}", namespace, "<kubernetes>"),
                    hosts=(f"{name}.{namespace}.svc.{self.settings.domain}",),
                    ports=service.ports,
                    endpoints=self._endpoints(slices),
                )
                made = (
                    (entry, *self._pod_entries(entry, name, slices))
                    if service.headless
                    else (entry,)
                )
            built[key] = (service, slices, made)
            entries.extend(made)
        self._built = built
        return tuple(entries)

    def _endpoints(
        self, slices: Sequence[_Slice], only: Callable[[_Endpoint], bool] = lambda ep: True
    ) -> tuple[WorkloadEndpoint, ...]:
        """One instance per Pod (per address for endpoints without one), its ports
        gathered from every slice it is in: Pods sharing an address (host network)
        stay apart. `only` keeps some endpoints."""
        ports: dict[tuple[str, str], dict[str, int]] = {}
        first: dict[tuple[str, str], _Endpoint] = {}
        for slice_ in slices:
            for ep in slice_.endpoints:
                if not only(ep):
                    continue
                key = (ep.address, ep.pod)
                ports.setdefault(key, {}).update(slice_.ports)
                known = first.get(key)
                if known is None or (known.health != "HEALTHY" and ep.health == "HEALTHY"):
                    first[key] = ep
        return tuple(self._instance(first[k], ports[k]) for k in sorted(first))

    def _pod_entries(
        self, entry: ServiceEntry, service: str, slices: Sequence[_Slice]
    ) -> list[ServiceEntry]:
        """A headless Service's per-Pod hosts, one entry each with that Pod only."""
        hostnames = {
            (ep.address, ep.pod): ep.hostname or self._pod_hostname(ep.pod, service)
            for slice_ in slices
            for ep in slice_.endpoints
        }
        entries: list[ServiceEntry] = []
        for hostname in sorted({h for h in hostnames.values() if h}):

            def named(ep: _Endpoint, hostname: str = hostname) -> bool:
                return hostnames[ep.address, ep.pod] == hostname

            endpoints = self._endpoints(slices, named)
            entries.append(
                replace(
                    entry,
                    meta=replace(entry.meta, name=f"{entry.meta.name}-{hostname}"),
                    hosts=(f"{hostname}.{entry.hosts[0]}",),
                    endpoints=endpoints[:1],  # one Pod per name, as DNS answers
                )
            )
        return entries

    def _pod_hostname(self, pod_key: str, service: str) -> str:
        """The Pod's own hostname when its subdomain is this Service (what the
        endpointslice controller copies into the slice; read here too, for a
        slice written before the Pod said so)."""
        pod = self._pods.get(pod_key) if pod_key else None
        return pod.hostname if pod is not None and pod.subdomain == service else ""

    def _instance(self, ep: _Endpoint, ports: dict[str, int]) -> WorkloadEndpoint:
        pod = self._pods.get(ep.pod) if ep.pod else None
        node = ep.node or (pod.node if pod else "")
        locality = self.nodes.items.get(node, "") if node else ""
        if not locality and ep.zone:
            locality = f"/{ep.zone}"
        return WorkloadEndpoint(
            address=ep.address,
            ports=ports,
            labels=dict(pod.labels) if pod else {},
            locality=locality,
            service_account=pod.service_account if pod else "",
            health=ep.health,
        )

    def _warn_skipped(self, key: str, service: _Service) -> None:
        for why in service.skipped:
            if f"{key} {why}" not in self._warned:
                self._warned.add(f"{key} {why}")
                log.warning("Kubernetes Service %s: %s", key, why)


def _merged(reflectors: Sequence[Reflector[T]]) -> dict[str, T]:
    """The items of per-namespace reflectors as one mapping (keys are ns/name)."""
    if len(reflectors) == 1:
        return reflectors[0].items
    return {k: v for r in reflectors for k, v in r.items.items()}
