"""Load a directory of Istio YAML into a validated `MeshConfig`.

All-or-nothing: either every file, document and reference is valid and a
`MeshConfig` is returned, or `ConfigLoadError` lists every problem found. A
partly valid configuration is never returned, because serving half of an
operator's change (a route without the subset it points to) is worse than
keeping the last good one (see watch.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import yaml

from .delegates import resolve_delegates
from .documents import Document, Resource, expand_lists, parse_document
from .errors import ConfigLoadError, ConfigProblem
from .gateway_api_attach import resolve_selectors
from .gateway_api_refs import ReferenceGrant, resolve_backend_refs
from .label_selector import Namespace
from .model import (
    AuthorizationPolicy,
    DestinationRule,
    MeshConfig,
    MeshSettings,
    PeerAuthentication,
    RequestAuthentication,
    ServiceEntry,
    VirtualService,
    WorkloadEntry,
)
from .parse_gateway import Gateway
from .parse_mesh_config import MeshConfigMap, mesh_config_problems
from .parse_sidecar import Sidecar, overlapping_selectors
from .parse_telemetry import Telemetry
from .parsed_files import ParsedFiles
from .references import check_references, reference_warnings
from .schema import Problems
from .short_hosts import qualify_rule, qualify_virtual_service
from .workload_group import WorkloadGroup

__all__ = ["config_files", "load_config_dir", "parse_documents"]

_SUFFIXES = (".yaml", ".yml")


def config_files(root: Path) -> list[Path]:
    """The YAML files under `root` that make up the configuration, sorted.

    Hidden files and directories are skipped: editors' swap and lock files
    (`.x.swp`, `.#x`) and the `..data` directories of a Kubernetes ConfigMap
    volume (whose visible symlinks are read instead). So are backups (`x~`)
    and Emacs auto-saves (`#x#`). Symlinked directories are not followed.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith((".", "#")) or name.endswith("~"):
                continue
            if name.lower().endswith(_SUFFIXES):
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def load_config_dir(
    path: Path,
    settings: MeshSettings | None = None,
    extra: Iterable[Document] = (),
    known: Sequence[ServiceEntry] = (),
    parsed: ParsedFiles | None = None,
) -> MeshConfig:
    """Read, validate and cross-check every config file under `path`, then `extra`
    (documents from elsewhere: Kubernetes). A resource (kind, namespace, name) that a
    file defines is the file's: the same one in `extra` is left out. `known` are
    services that registries declare (Kubernetes Services, Consul): references to
    their hosts resolve, but they are not part of the result (the registry hub adds
    them to each config it applies). `parsed`: what files parsed to on the
    last load (a watcher's), so unchanged files are not parsed again.

    `settings` (trust domain, root namespace) come from control-plane flags and
    are carried in the result, since translation depends on them. Raises
    ConfigLoadError with all problems found, in file order.
    """
    root = Path(path)
    if not root.is_dir():
        reason = "does not exist" if not root.exists() else "is not a directory"
        raise ConfigLoadError([ConfigProblem(str(root), "", "", f"config directory {reason}")])
    builder = _Builder(settings or MeshSettings())
    files = config_files(root)
    for file in files:
        builder.add(_read_documents(root, file, builder.problems, parsed))
    if parsed is not None:
        parsed.keep_only(files)
    builder.add(extra, lower=True)
    return builder.finish(known)


def parse_documents(
    docs: Iterable[tuple[str, object]], settings: MeshSettings | None = None
) -> MeshConfig:
    """Validate already-parsed documents, each given with the file name to report.

    The same checks as `load_config_dir`, without touching the filesystem
    (for tests, and for tools that get YAML from elsewhere).
    """
    builder = _Builder(settings or MeshSettings())
    builder.add(Document(file, data) for file, data in docs)
    return builder.finish()


class _Builder:
    """Collects resources and problems document by document, then checks references."""

    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings
        self.problems: list[ConfigProblem] = []
        self._resources: list[Resource] = []
        self._seen: dict[tuple[str, str, str], str] = {}

    def add(self, documents: Iterable[Document], *, lower: bool = False) -> None:
        """`lower`: these documents yield to a resource already added (no duplicate)."""
        for doc in documents:
            if doc.data is None:  # an empty document, e.g. after a trailing "---"
                continue
            for item in expand_lists(doc, Problems(self.problems, doc.file, line=doc.line)):
                self._add_one(item, lower)

    def _add_one(self, doc: Document, lower: bool = False) -> None:
        meta, resource = parse_document(Problems(self.problems, doc.file, line=doc.line), doc)
        if meta is None:
            return
        key = (meta.kind, meta.namespace, meta.name)
        if key in self._seen and lower:
            return
        if key in self._seen:
            message = f"duplicate resource, also defined in {self._seen[key]}"
            self.problems.append(ConfigProblem(meta.file, meta.ref, "", message))
            return
        self._seen[key] = meta.file
        if resource is not None:
            self._resources.append(resource)

    def finish(self, known: Sequence[ServiceEntry] = ()) -> MeshConfig:
        if self.problems:
            # References are checked only on a fully parsed configuration: a resource
            # that failed to parse would otherwise show up as a dangling reference.
            raise ConfigLoadError(self.problems)
        config = _assemble(self._resources, self.settings)
        mesh_problems, mesh_warnings = mesh_config_problems(self._resources, config)
        if mesh_problems:
            raise ConfigLoadError(mesh_problems)
        declared = {host for entry in config.service_entries for host in entry.hosts}
        extra = tuple(e for e in known if not declared.intersection(e.hosts))
        grants = tuple(r for r in self._resources if isinstance(r, ReferenceGrant))
        hosts = frozenset(declared.union(*(e.hosts for e in extra)))
        config, unresolved = resolve_backend_refs(config, grants, hosts)
        labels = {r.meta.name: r.labels for r in self._resources if isinstance(r, Namespace)}
        config, listener_warnings = resolve_selectors(config, labels)
        checked = replace(config, service_entries=config.service_entries + extra)
        # Before delegation: errors name the file written.
        dangling = check_references(checked if extra else config)
        if dangling:
            raise ConfigLoadError(dangling)
        warnings = [*reference_warnings(config), *overlapping_selectors(config.sidecars)]
        config, dropped = resolve_delegates(config)
        return replace(
            config, warnings=(*dropped, *unresolved, *listener_warnings, *warnings, *mesh_warnings)
        )


def _assemble(resources: list[Resource], settings: MeshSettings) -> MeshConfig:
    """Group by kind and sort by (namespace, name) so translation is deterministic;
    short host names qualified (see short_hosts)."""
    resources.sort(key=lambda r: (r.meta.namespace, r.meta.name))
    if settings.outbound_policy is None:  # the flag unset: the mesh config's, if any
        modes = [
            r.outbound_policy
            for r in resources
            if isinstance(r, MeshConfigMap) and r.meta.namespace == settings.root_namespace
        ]
        settings = replace(settings, outbound_policy=next(filter(None, modes), None))
    return MeshConfig(
        service_entries=tuple(
            r for r in resources if isinstance(r, ServiceEntry) and not r.passthrough
        ),
        passthrough_entries=tuple(
            r for r in resources if isinstance(r, ServiceEntry) and r.passthrough
        ),
        workload_entries=tuple(r for r in resources if isinstance(r, WorkloadEntry)),
        destination_rules=tuple(
            qualify_rule(r, settings.domain) for r in resources if isinstance(r, DestinationRule)
        ),
        virtual_services=tuple(
            qualify_virtual_service(r, settings.domain)
            for r in resources
            if isinstance(r, VirtualService)
        ),
        peer_authentications=tuple(r for r in resources if isinstance(r, PeerAuthentication)),
        authorization_policies=tuple(r for r in resources if isinstance(r, AuthorizationPolicy)),
        request_authentications=tuple(r for r in resources if isinstance(r, RequestAuthentication)),
        settings=settings,
        workload_groups=tuple(r for r in resources if isinstance(r, WorkloadGroup)),
        telemetries=tuple(r for r in resources if isinstance(r, Telemetry)),
        gateways=tuple(r for r in resources if isinstance(r, Gateway)),
        sidecars=tuple(r for r in resources if isinstance(r, Sidecar)),
        extension_providers=tuple(
            sorted(
                (name, provider)
                for r in resources
                if isinstance(r, MeshConfigMap) and r.meta.namespace == settings.root_namespace
                for name, provider in r.providers.items()
            )
        ),
    )


def _read_documents(
    root: Path, path: Path, sink: list[ConfigProblem], parsed: ParsedFiles | None
) -> list[Document]:
    """The documents of one file; none when the file is not valid YAML.

    A file with a syntax error contributes nothing, not the documents before
    the error: half a file is not what the operator meant either.
    """
    file = path.relative_to(root).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        sink.append(ConfigProblem(file, "", "", "not UTF-8 text"))
        return []
    except OSError as err:
        sink.append(ConfigProblem(file, "", "", f"could not read file: {err.strerror or err}"))
        return []
    if parsed is None:
        documents, problems = _parse_text(file, text)
    else:
        documents, problems = parsed.parse(path, text, partial(_parse_text, file))
    sink.extend(problems)
    return documents


def _parse_text(file: str, text: str) -> tuple[list[Document], list[ConfigProblem]]:
    """`file`'s documents and the problems found in it (then no documents)."""
    documents: list[Document] = []
    sink: list[ConfigProblem] = []
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if _depth(node) > MAX_DEPTH:
                sink.append(
                    ConfigProblem(
                        file,
                        "",
                        "",
                        f"YAML nested more than {MAX_DEPTH} levels deep",
                        node.start_mark.line + 1,
                    )
                )
                return [], sink
            sink.extend(
                ConfigProblem(file, "", "", f'duplicate key "{key}"', line)
                for key, line in sorted(_duplicate_keys(node), key=lambda pair: pair[1])
            )
            loader = yaml.SafeLoader("")
            try:
                data = loader.construct_document(node)
            finally:
                loader.dispose()
            documents.append(Document(file, data, node.start_mark.line + 1))
    except yaml.YAMLError as err:
        sink.append(_yaml_problem(file, err))
        return [], sink
    except RecursionError:
        # PyYAML's composer recurses per nesting level; a hostile file must
        # be an error naming it, not a crash of the watcher.
        sink.append(ConfigProblem(file, "", "", "YAML nested too deeply to parse"))
        return [], sink
    return (documents if not sink else []), sink


# No Istio resource comes near this; deeper documents are rejected before
# anything recursive (construction, validation) walks them.
MAX_DEPTH = 64


def _depth(root: yaml.Node) -> int:
    """Nesting depth of a composed YAML node, without recursion."""
    deepest = 0
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:  # aliases can make the graph cyclic
            continue
        seen.add(id(node))
        deepest = max(deepest, depth)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
    return deepest


def _yaml_problem(file: str, err: yaml.YAMLError) -> ConfigProblem:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    message = f"could not parse YAML: {problem}" + (f" ({context})" if context else "")
    return ConfigProblem(file, "", "", message, mark.line + 1 if mark is not None else None)


def _duplicate_keys(node: yaml.Node) -> Iterator[tuple[str, int]]:
    """Keys given twice in one mapping: PyYAML silently keeps the last one, which
    would hide half of what the operator wrote (two `route:` keys, say)."""
    stack = [node]
    visited: set[int] = set()  # anchors make the node graph a DAG, even a cyclic one
    while stack:
        current = stack.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        yield key.value, key.start_mark.line + 1
                    seen.add(key.value)
                stack.extend((key, value))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
