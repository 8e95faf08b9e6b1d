"""From members' lists to the lists a virtual server's clients see, and from a visible name back to
its member (pure functions of the IR and what the members answered).

Tools and prompts get visible names by the server's naming mode: `always`
`<prefix><separator><name>`; `onConflict` only the names two members share
are prefixed; `never` a shared name is hidden and reported. Then, for tools
only, in this order: `include` / `exclude` (globs on the visible name),
`rename`, `descriptions`. A visible name two items would share (a renamed
tool taking another's name, a bare name that looks prefixed) is given to the
first member in the server's order and hidden for the others, reported.
Resources keep their URIs (a URI two members list is the first member's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xds_server.ir.glob import glob_matches
from xds_server.ir.virtual_mcp import VirtualServerIR

#: The list methods and the key of their items.
LISTS = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
         "resources/templates/list": "resourceTemplates"}  # fmt: skip


@dataclass(frozen=True)
class Origin:
    """Where a visible tool or prompt comes from: its member and its own name there."""

    backend: str
    name: str


@dataclass
class Catalog:
    """A virtual server's lists as its clients see them, and where each item comes from."""

    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by list key (LISTS values)
    tools: dict[str, Origin] = field(default_factory=dict)  # visible name -> origin
    prompts: dict[str, Origin] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)  # uri -> backend
    templates: list[tuple[str, str]] = field(default_factory=list)  # (uriTemplate, backend)
    hidden: list[str] = field(default_factory=list)  # what was left out, and why
    missing: tuple[str, ...] = ()  # members whose lists could not be read

    def resource_backend(self, uri: str) -> str | None:
        """The member serving `uri`: the one listing it, else the one whose template's fixed start is longest."""
        if uri in self.resources:
            return self.resources[uri]
        best: tuple[int, str] | None = None
        for template, backend in self.templates:
            start = template.split("{", 1)[0]
            if start and uri.startswith(start) and (best is None or len(start) > best[0]):
                best = (len(start), backend)
        return best[1] if best else None


def _visible(virtual: VirtualServerIR, kind: str, per_member: Mapping[str, Sequence[Mapping[str, Any]]],
             catalog: Catalog) -> tuple[list[dict[str, Any]], dict[str, Origin]]:  # fmt: skip
    counts = Counter(str(item.get("name")) for items in per_member.values() for item in items)
    out: list[dict[str, Any]] = []
    origins: dict[str, Origin] = {}
    for member in virtual.members:
        for item in per_member.get(member.backend, ()):
            name = item.get("name")
            if not isinstance(name, str) or not name:
                catalog.hidden.append(f"{kind} without a name from backend {member.backend!r}")
                continue
            shared = counts[name] > 1
            if virtual.mode == "always" or (virtual.mode == "onConflict" and shared):
                visible = f"{member.prefix}{virtual.separator}{name}"
            elif virtual.mode == "never" and shared:
                catalog.hidden.append(f"{kind} {name!r} of backend {member.backend!r}: another backend has one "
                                      "of that name (naming mode never)")  # fmt: skip
                continue
            else:
                visible = name
            if kind == "tool":
                shown = _curated(virtual, visible)
                if shown is None:
                    continue
                visible = shown
            if visible in origins:
                catalog.hidden.append(f"{kind} {name!r} of backend {member.backend!r}: its name {visible!r} is "
                                      f"already that of backend {origins[visible].backend!r}'s")  # fmt: skip
                continue
            origins[visible] = Origin(member.backend, name)
            copy = {**item, "name": visible}
            if kind == "tool" and (text := dict(virtual.descriptions).get(visible)) is not None:
                copy["description"] = text
            out.append(copy)
    return out, origins


def _curated(virtual: VirtualServerIR, visible: str) -> str | None:
    """The name a tool is shown under after curation, or None when it is not shown."""
    if not any(glob_matches(p, visible) for p in virtual.include):
        return None
    if any(glob_matches(p, visible) for p in virtual.exclude):
        return None
    return dict(virtual.renames).get(visible, visible)


def catalog_of(virtual: VirtualServerIR, lists: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
               missing: Sequence[str] = ()) -> Catalog:  # fmt: skip
    """The catalog of `virtual` from `lists[list key][backend]` (the items each member listed)."""
    catalog = Catalog(missing=tuple(missing))
    catalog.items["tools"], catalog.tools = _visible(virtual, "tool", lists.get("tools", {}), catalog)
    catalog.items["prompts"], catalog.prompts = _visible(virtual, "prompt", lists.get("prompts", {}), catalog)
    resources: list[dict[str, Any]] = []
    for member in virtual.members:
        for item in lists.get("resources", {}).get(member.backend, ()):
            uri = item.get("uri")
            if not isinstance(uri, str) or uri in catalog.resources:
                catalog.hidden.append(f"resource {uri!r} of backend {member.backend!r}: listed already")
                continue
            catalog.resources[uri] = member.backend
            resources.append(dict(item))
    templates: list[dict[str, Any]] = []
    for member in virtual.members:
        for item in lists.get("resourceTemplates", {}).get(member.backend, ()):
            template = item.get("uriTemplate")
            if isinstance(template, str):
                catalog.templates.append((template, member.backend))
                templates.append(dict(item))
    catalog.items["resources"], catalog.items["resourceTemplates"] = resources, templates
    return catalog


def origin_by_name(virtual: VirtualServerIR, kind: str, visible: str) -> Origin | None:
    """With naming `always`, where a visible tool or prompt name comes from, read off the name itself (the
    same answer as the lists give, without reading them): the rename undone, the curation applied, the
    member whose prefix it carries. The policy model keeps prefixes from overlapping and new names from
    looking prefixed, so no two members can claim a name."""
    if virtual.mode != "always":
        raise ValueError("only names that are always prefixed say where they come from")
    name = visible
    if kind == "tool":
        renames = dict(virtual.renames)
        if visible in renames:
            return None  # renamed away: the old name is no name
        name = next((old for old, new in virtual.renames if new == visible), visible)
        if _curated(virtual, name) != visible:
            return None
    for member in virtual.members:
        start = member.prefix + virtual.separator
        if name.startswith(start) and len(name) > len(start):
            return Origin(member.backend, name[len(start) :])
    return None
