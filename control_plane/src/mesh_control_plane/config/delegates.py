"""VirtualService delegation (`http[].delegate`), merged as istiod merges it.

A root VirtualService (with hosts) hands a route to a delegate (no hosts): the
delegate's routes take the root route's place, in order. Each delegate match
must lie within one of the root route's matches (a root prefix `/a` admits a
delegate prefix `/a/b` or exact `/a/x`; regexes never merge); it is merged with
every root match it fits, a field the delegate leaves unset taking the root's.
A delegate route none of whose matches fits is dropped, as a root route whose
delegate does not exist (yet): both with a warning, as istiod logs them. The
root route's other fields (timeout, retries, fault, rewrite, mirrors, CORS,
headers) apply where the delegate route sets none. One level only.

Resolved once after loading, so translation, references and `simulate` see
plain routes; delegate VirtualServices are then dropped from the config.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import ConfigProblem
from .model import HTTPMatchRequest, HTTPRoute, MeshConfig, StringMatch, VirtualService
from .visibility import exported


def resolve_delegates(config: MeshConfig) -> tuple[MeshConfig, list[ConfigProblem]]:
    """The config with delegation merged into the roots, and what was dropped."""
    delegates = {
        (vs.meta.namespace, vs.meta.name): vs for vs in config.virtual_services if not vs.hosts
    }
    if not delegates and not any(r.delegate for vs in config.virtual_services for r in vs.http):
        return config, []
    warnings: list[ConfigProblem] = []
    roots = []
    for vs in config.virtual_services:
        if vs.hosts:
            roots.append(_merge_root(vs, delegates, warnings))
    used = {r.delegate for vs in config.virtual_services for r in vs.http if r.delegate}
    for key, vs in delegates.items():
        if key not in used:  # a forgotten `hosts` must not pass unnoticed
            message = "no hosts, so a delegate, but no VirtualService delegates to it: unused"
            warnings.append(ConfigProblem(vs.meta.file, vs.meta.ref, "spec.hosts", message))
    return replace(config, virtual_services=tuple(roots)), warnings


def _merge_root(
    root: VirtualService,
    delegates: dict[tuple[str, str], VirtualService],
    warnings: list[ConfigProblem],
) -> VirtualService:
    routes: list[HTTPRoute] = []
    for position, route in enumerate(root.http):
        if route.delegate is None:
            routes.append(route)
            continue
        where = f"spec.http[{position}].delegate"
        delegate = delegates.get(route.delegate)
        if delegate is not None and not exported(
            delegate.meta, delegate.export_to, root.meta.namespace
        ):
            delegate = None  # Istio: a delegate the root's namespace cannot see is missing
        if delegate is None:
            namespace, name = route.delegate
            message = (
                f"no delegate VirtualService {namespace}/{name} (one without hosts) exported "
                f"to {root.meta.namespace}: the route is left out until there is"
            )
            problem = ConfigProblem(root.meta.file, root.meta.ref, where, message, code="IST0101")
            warnings.append(problem)
            continue
        for index, leaf in enumerate(delegate.http):
            merged = _merge_route(route, leaf)
            if merged is None:
                message = (
                    f"route http[{index}] of delegate {delegate.meta.ref} matches nothing "
                    "within this route's match: left out"
                )
                warnings.append(ConfigProblem(root.meta.file, root.meta.ref, where, message))
            else:
                routes.append(merged)
    return replace(root, http=tuple(routes))


def _merge_route(root: HTTPRoute, leaf: HTTPRoute) -> HTTPRoute | None:
    matches = _merge_matches(root.match, leaf.match)
    if matches is None:
        return None
    name = leaf.name if not root.name else (f"{root.name}-{leaf.name}" if leaf.name else root.name)
    return replace(
        leaf,
        name=name,
        match=matches,
        timeout=leaf.timeout if leaf.timeout is not None else root.timeout,
        retries=leaf.retries if leaf.retries is not None else root.retries,
        fault=leaf.fault if leaf.fault is not None else root.fault,
        rewrite=leaf.rewrite if leaf.rewrite is not None else root.rewrite,
        mirrors=leaf.mirrors or root.mirrors,
        cors=leaf.cors if leaf.cors is not None else root.cors,
        headers=leaf.headers if leaf.headers != type(leaf.headers)() else root.headers,
    )


def _merge_matches(
    root: tuple[HTTPMatchRequest, ...], leaf: tuple[HTTPMatchRequest, ...]
) -> tuple[HTTPMatchRequest, ...] | None:
    """Every leaf match merged with each root match it lies within; None when
    some leaf match lies within none (istiod drops the whole route then)."""
    if not root:
        return leaf
    if not leaf:
        return root
    merged: list[HTTPMatchRequest] = []
    for sub in leaf:
        fits = [outer for outer in root if not _conflict(outer, sub)]
        if not fits:
            return None
        merged += [_merge_match(outer, sub) for outer in fits]
    return tuple(merged)


def _merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    return HTTPMatchRequest(
        name=leaf.name or root.name,
        uri=leaf.uri or root.uri,
        method=leaf.method or root.method,
        headers={**root.headers, **leaf.headers},
        ignore_uri_case=leaf.ignore_uri_case,
    )


def _conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    if _string_conflict(root.uri, leaf.uri) or _string_conflict(root.method, leaf.method):
        return True
    if any(_string_conflict(root.headers.get(k), v) for k, v in leaf.headers.items()):
        return True
    return root.ignore_uri_case != leaf.ignore_uri_case


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """istiod's rule: the leaf must be as narrow as the root; regexes never merge."""
    if root is None or leaf is None:
        return False
    if "regex" in (root.kind, leaf.kind):
        return True
    if root.kind == "exact":
        return leaf.kind != "exact" or leaf.value != root.value
    return not leaf.value.startswith(root.value)  # root prefix: leaf prefix or exact within
