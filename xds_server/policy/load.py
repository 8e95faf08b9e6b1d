"""Load a policy set: files -> YAML documents -> validated models -> PolicySet.

Nothing stops at the first problem. Every file is read, every document is
validated, the cross-document checks run, and then either a `PolicySet` is
returned or one `PolicyError` carrying every diagnostic, each with its file,
line and field path.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .a2a import A2AAgent, A2APolicy
from .agent import Agent
from .base import PATTERN_HINTS, DocumentModel
from .checks import Declared, cross_check, provided, references
from .diagnostics import Diagnostic, Path, PolicyError, join_field, subject
from .doc_cache import DocumentCache, Read
from .gateway import Gateway
from .kinds import KIND_OF_MODEL, KIND_SPECS, MODELS, resolve_gateway
from .located import Located, Source
from .mcp import MCPBackend, MCPPolicy, MCPToolLock
from .yamldoc import ParsedDocument, parse_documents

POLICY_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 4 * 1024 * 1024  # far beyond any real policy file; bounds memory on mistakes


D = TypeVar("D", bound=DocumentModel)


@dataclass(frozen=True)
class PolicySet:
    """A valid, cross-checked policy set: the documents of each kind (`kinds.KIND_SPECS`),
    each tuple sorted by name.

    A routed document without `spec.gateway` belongs to the only gateway; use
    `gateway_of` rather than reading `spec.gateway` directly.
    """

    by_kind: Mapping[str, tuple[Located[Any], ...]] = field(default_factory=dict)
    # Every file read, with how many documents it holds (0: empty, or comments only).
    documents: Mapping[str, int] = field(default_factory=dict)

    def of(self, model: type[D]) -> tuple[Located[D], ...]:
        """The documents of one kind, sorted by name."""
        return self.by_kind.get(KIND_OF_MODEL[model], ())

    @property
    def gateways(self) -> tuple[Located[Gateway], ...]:
        return self.of(Gateway)

    @property
    def backends(self) -> tuple[Located[MCPBackend], ...]:
        return self.of(MCPBackend)

    @property
    def agents(self) -> tuple[Located[Agent], ...]:
        return self.of(Agent)

    @property
    def policies(self) -> tuple[Located[MCPPolicy], ...]:
        return self.of(MCPPolicy)

    @property
    def locks(self) -> tuple[Located[MCPToolLock], ...]:
        return self.of(MCPToolLock)

    def lock_for(self, backend: str) -> Located[MCPToolLock] | None:
        """The MCPToolLock pinning `backend`'s tools, if any (there is at most one)."""
        return next((lk for lk in self.locks if lk.doc.spec.backend == backend), None)

    def gateway_of(self, routed: Located[Any] | DocumentModel) -> str:
        """Name of the gateway serving a routed document (its own, or the only one)."""
        doc = routed.doc if isinstance(routed, Located) else routed
        name = resolve_gateway(doc.spec.gateway, [g.name for g in self.gateways])  # type: ignore[union-attr]
        if name is None:  # impossible for a loaded set; guards hand-built ones
            raise ValueError(f"{doc.kind} {doc.metadata.name!r} has no resolvable gateway")
        return name

    def backends_of(self, gateway: str) -> tuple[Located[MCPBackend], ...]:
        """Backends served on `gateway`, sorted by name."""
        return tuple(b for b in self.backends if self.gateway_of(b) == gateway)

    def policies_for(self, backend: str) -> tuple[Located[MCPPolicy], ...]:
        """Policies whose `spec.backend` is `backend`, sorted by name."""
        return self._policies_by_backend.get(backend, ())

    @functools.cached_property
    def _policies_by_backend(self) -> dict[str, tuple[Located[MCPPolicy], ...]]:
        by_backend: dict[str, list[Located[MCPPolicy]]] = {}
        for policy in self.policies:  # sorted by name, so each list is too
            by_backend.setdefault(policy.doc.spec.backend, []).append(policy)
        return {backend: tuple(policies) for backend, policies in by_backend.items()}

    def a2a_agents_of(self, gateway: str) -> tuple[Located[A2AAgent], ...]:
        """A2A agents served on `gateway`, sorted by name."""
        return tuple(a for a in self.of(A2AAgent) if self.gateway_of(a) == gateway)

    def a2a_policies_for(self, a2a_agent: str) -> tuple[Located[A2APolicy], ...]:
        """A2APolicies whose `spec.a2aAgent` is `a2a_agent`, sorted by name."""
        return tuple(p for p in self.of(A2APolicy) if p.doc.spec.a2a_agent == a2a_agent)

    def agent(self, name: str) -> Located[Agent] | None:
        return next((a for a in self.agents if a.name == name), None)


def load_directory(path: str | os.PathLike[str], cache: DocumentCache | None = None,
                   extra: Mapping[str, str] | None = None) -> PolicySet:  # fmt: skip
    """Load every `*.yaml`/`*.yml` under `path` (recursively, sorted), and the documents of `extra`
    (file name → YAML text: the runtime registry's, sources/registry.py).

    Hidden files and directories are skipped and symlinked directories are not
    followed. `path` may also name a single file. Diagnostics name files as
    `path` joined with the file's place under it. Raises PolicyError. With
    `cache`, documents read by an earlier load are not read again (the result
    is the same as without it).
    """
    root = FsPath(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = [root / rel for rel in _policy_files(root)]
    else:
        raise PolicyError([Diagnostic(str(path), 0, "", "no such policy file or directory")])
    texts: dict[str, str] = {}
    diags: list[Diagnostic] = []
    for file in files:
        try:
            data = file.read_bytes()
            if len(data) > MAX_FILE_BYTES:
                diags.append(Diagnostic(str(file), 0, "", f"file is larger than {MAX_FILE_BYTES} bytes"))
                continue
            texts[str(file)] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            diags.append(Diagnostic(str(file), 0, "", f"not UTF-8 text (byte {exc.start})"))
        except OSError as exc:
            diags.append(Diagnostic(str(file), 0, "", f"cannot read: {exc.strerror or exc}"))
    texts.update(extra or {})
    return _load(texts, diags, empty=Diagnostic(str(path), 0, "", f"no policy documents found in {path}"), cache=cache)


def load_texts(files: Mapping[str, str]) -> PolicySet:
    """Load a policy set from `{file name: YAML text}`, in sorted name order."""
    return _load(dict(files), [], empty=Diagnostic("", 0, "", "no policy documents found"))


def _policy_files(root: FsPath) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = FsPath(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if not f.startswith(".") and f.endswith(POLICY_SUFFIXES)]
    return sorted(found)


def _load(texts: Mapping[str, str], diags: list[Diagnostic], *, empty: Diagnostic,
          cache: DocumentCache | None = None) -> PolicySet:  # fmt: skip
    complete = not diags
    declared: list[Declared] = []
    valid: list[Located[Any]] = []
    documents: dict[str, int] = {}
    for file in sorted(texts):
        read = cache.read(file, texts[file], _read_file) if cache is not None else _read_file(file, texts[file])
        documents[file] = len(read.validated)
        diags += read.parse_diags
        complete = complete and not read.parse_diags
        for decl, located, doc_diags in read.validated:
            declared += [decl] if decl else []
            valid += [located] if located else []
            diags += doc_diags
    if cache is not None:
        cache.forget_unused()
    if not declared and not diags:
        diags.append(empty)
    diags += cross_check(declared, valid, complete=complete)
    if diags:
        raise PolicyError(diags)
    return PolicySet({spec.kind: _sorted(valid, spec.kind) for spec in KIND_SPECS}, documents)


def _read_file(file: str, text: str) -> Read:
    docs, parse_diags = parse_documents(text, file)
    return Read(parse_diags, [_validate(parsed, file) for parsed in docs])


def _sorted(valid: Iterable[Located[Any]], kind: str) -> tuple[Located[Any], ...]:
    return tuple(sorted((v for v in valid if v.doc.kind == kind), key=lambda v: v.name))


def _validate(parsed: ParsedDocument, file: str) -> tuple[Declared | None, Located[Any] | None, list[Diagnostic]]:
    """Validate one document; returns (its declaration, the model, problems)."""
    raw = parsed.value
    if not isinstance(raw, dict):
        diags = [Diagnostic(file, parsed.line_of(p), "", msg) for p, msg in parsed.issues]
        if not parsed.issues:  # otherwise the issue says why the value is missing
            found = _YAML_TYPES.get(type(raw), type(raw).__name__)
            diags.append(Diagnostic(file, parsed.line, "", f"a policy document must be a mapping, got {found}"))
        return None, None, diags
    raw_kind = raw.get("kind")
    kind = raw_kind if isinstance(raw_kind, str) and raw_kind in MODELS else None
    metadata = raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    who = subject(kind, name if isinstance(name, str) else None)
    diags = [Diagnostic(file, parsed.line_of(p), join_field(who, p), msg) for p, msg in parsed.issues]
    if kind is None:
        message = (
            f"unknown kind {raw_kind!r} (expected one of: {', '.join(sorted(MODELS))})"
            if "kind" in raw
            else f"missing required field 'kind' (one of: {', '.join(sorted(MODELS))})"
        )
        return None, None, [*diags, Diagnostic(file, parsed.line_of(("kind",)), "kind", message)]
    model = MODELS[kind]
    decl = None
    if isinstance(name, str):
        name_line = parsed.line_of(("metadata", "name"))
        decl = Declared(kind, name, Source(file, name_line), references(kind, raw), provided(kind, raw), parsed.line_of)
    try:
        doc = model.model_validate(raw, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        locs = [tuple(e["loc"]) for e in errors]
        for err in errors:
            path = _error_path(err)
            if any(path[:n] in parsed.dropped for n in range(len(path) + 1)):
                continue  # already reported while reading the YAML
            if err["type"] == "too_short" and _has_item_errors(path, locs):
                continue  # "empty" only because its items failed, which are reported
            diags.append(Diagnostic(file, parsed.line_of(path), join_field(who, path), _message(err, model)))
        return decl, None, diags
    located: Located[Any] = Located(doc, Source(file, parsed.line), parsed.lines)
    return decl, (located if not diags else None), diags


_YAML_TYPES = {list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _has_item_errors(path: Path, locs: Iterable[tuple[Any, ...]]) -> bool:
    """Whether some error lies inside an item of the list at `path`."""
    n = len(path)
    return any(len(loc) > n and loc[:n] == path and isinstance(loc[n], int) for loc in locs)


def _error_path(err: ErrorDetails) -> Path:
    path: list[Any] = [p for p in err["loc"] if p != "[key]"]
    at = (err.get("ctx") or {}).get("at")
    if at:  # a model validator blaming one of its fields ("a.b" for a nested one)
        path.extend(str(at).split("."))
    return tuple(path)


def _message(err: ErrorDetails, model: type[BaseModel]) -> str:
    """A diagnostic message for one pydantic error, in the words a YAML user needs."""
    kind, loc, ctx = err["type"], err["loc"], err.get("ctx") or {}
    if kind == "missing":
        return f"missing required field {loc[-1]!r}"
    if kind == "extra_forbidden":
        return _unknown_field(str(loc[-1]), _fields_at(model, loc[:-1]))
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"]))
    elif kind == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_HINTS:
        message = PATTERN_HINTS[ctx["pattern"]]
    elif kind in _REWORDED:
        message = _REWORDED[kind](ctx)
    else:
        message = err["msg"][:1].lower() + err["msg"][1:]
    if "[key]" in loc:
        message = f"mapping key: {message}"
    value = err.get("input")
    if (isinstance(value, (str, int, float, bool)) or value is None) and value != "":
        shown = _yaml_repr(value)
        if shown not in message and repr(value) not in message:
            message += f", got {shown}"
        if kind == "string_type":
            message += " (quote it to make it a string)"
    return message


def _items(n: Any) -> str:
    return "must not be empty" if n == 1 else f"must have at least {n} items"


# pydantic's wording talks about Python types ("tuple", "dictionary"); users
# wrote YAML, so these say "list" and "mapping".
_REWORDED: dict[str, Any] = {
    "too_short": lambda c: _items(c.get("min_length")),
    "string_too_short": lambda c: _items(c.get("min_length")).replace("items", "characters"),
    "too_long": lambda c: f"must have at most {c.get('max_length')} items",
    "string_too_long": lambda c: f"must have at most {c.get('max_length')} characters",
    "greater_than_equal": lambda c: f"must be at least {c.get('ge')}",
    "less_than_equal": lambda c: f"must be at most {c.get('le')}",
    "int_type": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be a whole number",
    "string_type": lambda c: "must be a string",
    "literal_error": lambda c: f"must be {c.get('expected')}",
    "tuple_type": lambda c: "must be a list",
    "list_type": lambda c: "must be a list",
    "dict_type": lambda c: "must be a mapping",
    "model_type": lambda c: "must be a mapping",
    "model_attributes_type": lambda c: "must be a mapping",
}


def _yaml_repr(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _unknown_field(name: str, allowed: list[str] | None) -> str:
    if not allowed:
        return f"unknown field {name!r}"
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f"unknown field {name!r} (did you mean {close[0]!r}?)"
    return f"unknown field {name!r} (expected one of: {', '.join(allowed)})"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The YAML keys allowed in the mapping at `loc` under `model`, if known."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue  # an index into a tuple of models keeps the item model
        fields = {(f.alias or n): f for n, f in current.model_fields.items()}
        current = _model_in(fields[part].annotation) if part in fields else None
    if current is None:
        return None
    return sorted((f.alias or n) for n, f in current.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _model_in(arg):
            return found
    return None
