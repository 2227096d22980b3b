"""What the schema alone cannot see: names that must refer to a backend, a stage or an option; option
values against the stage table; stages that need a backend type. Used by validation (so ``serve`` and
``config check`` report the same errors, all in one run, each at its key path) on the raw tree too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.config.env import Loc

__all__ = ["XREF_ERROR", "format_loc", "known_keys", "problems", "schema_loc"]

XREF_ERROR = "cross_reference"
_BACKEND_TAGS = frozenset({"openai", "local"})


def format_loc(loc: Loc) -> str:
    """``("models", 0, "stages", 1, "name")`` -> ``models[0].stages[1].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("function-"):
            continue  # a model validator's wrapper, not a key
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def schema_loc(loc: Sequence[int | str]) -> Loc:
    """A pydantic error location as a key path: validator wrappers and union tags dropped."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if i == 2 and loc[0] == "backends" and part in _BACKEND_TAGS:
            continue  # the discriminated union's branch, not a key
        if part in ("SoftPoolConfig", "TextPoolConfig") and len(out) >= 2 and out[-2] == "pools":
            continue
        out.append(part)
    return tuple(out)


def known_keys(loc: Sequence[int | str], raw: Any) -> list[str] | None:
    """The keys the section at ``loc`` accepts (for an unknown-key error), or None when it is not a
    fixed section. Backends are looked up by the ``type`` they have in ``raw``."""
    from gateway.config.schema import GatewayConfig, LocalBackendConfig, OpenAIBackendConfig

    cls: Any = GatewayConfig
    node = raw
    for i, part in enumerate(loc):
        node = node.get(part) if isinstance(node, Mapping) else node[part] if (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)) else None
        if i == 1 and loc[0] == "backends":
            cls = LocalBackendConfig if _backend_type(node) == "local" else OpenAIBackendConfig
            continue
        fields = cls.model_fields if isinstance(cls, type) and issubclass(cls, BaseModel) else {}
        field = fields.get(part) if isinstance(part, str) else None
        if field is None:
            if isinstance(part, int):
                continue
            return None
        cls = _model_of(field.annotation)
        if cls is None:
            return None
    return sorted(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _model_of(annotation: Any) -> Any:
    """The config class a field holds (itself, in a tuple, or optional), else None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _get(node: Any, key: str) -> Any:
    """``key`` of a raw mapping or a validated model (None when absent or of the wrong kind)."""
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None) if isinstance(node, BaseModel) else None


def _items(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, Mapping):
        return [(str(k), v) for k, v in node.items()]
    if isinstance(node, BaseModel):
        return [(k, getattr(node, k)) for k in type(node).model_fields if getattr(node, k) is not None]
    return []


def _backend_type(node: Any) -> Any:
    kind = _get(node, "type")
    return "openai" if kind is None and isinstance(node, Mapping) else kind


def problems(tree: Any) -> list[tuple[Loc, str]]:
    """Every reference and option problem in ``tree`` (a raw YAML tree or a validated GatewayConfig),
    each with its key path. Parts of the wrong shape are skipped (the schema reports those)."""
    from gateway.stages.table import DECODERS, STAGES, OptionError, check_option_values

    out: list[tuple[Loc, str]] = []
    backends = _get(tree, "backends")
    names = {k for k, _ in _items(backends)} if backends is not None else set()
    shaped = backends is None or isinstance(backends, Mapping | BaseModel)
    known_b = ", ".join(sorted(names)) or "none"
    known_s = ", ".join(STAGES)

    def backend_ref(value: Any, loc: Loc) -> None:
        if shaped and isinstance(value, str) and value not in names:
            out.append((loc, f"{value!r} is not a key of backends (known: {known_b})"))

    def stage_name(name: Any, loc: Loc) -> str | None:
        if not isinstance(name, str):
            return None
        entry = STAGES.get(name)
        if entry is None:
            out.append((loc, f"unknown stage {name!r} (known: {known_s})"))
            return None
        if entry.factory is None:
            out.append((loc, f"stage {name!r} is reserved but not available in this version of promptwire"))
            return None
        return name

    def options(stage: str, values: Any, loc: Loc) -> None:
        if not isinstance(values, Mapping):
            return
        try:
            check_option_values(STAGES[stage].options, values, f"stage {stage!r}")
        except OptionError as e:
            out.append(((*loc, e.option), str(e)))

    def stage_list(value: Any, loc: Loc) -> None:
        if not isinstance(value, list | tuple):
            return
        for j, spec in enumerate(value):
            name = stage_name(_get(spec, "name"), (*loc, j, "name"))
            if name is None:
                continue
            required = [k for k, f in STAGES[name].config.model_fields.items() if f.is_required()]
            if required and _get(_get(tree, "stages"), name) is None:
                out.append(((*loc, j, "name"), f"stage {name!r} needs a stages.{name} section "
                                               f"({', '.join(required)} required)"))
            options(name, _get(spec, "options"), (*loc, j, "options"))
            allowed = _get(spec, "client_options")
            if isinstance(allowed, list | tuple):
                known = {o.name for o in STAGES[name].options}
                for k, opt in enumerate(allowed):
                    if isinstance(opt, str) and opt != "*" and opt not in known:
                        out.append(((*loc, j, "client_options", k), f"stage {name!r} has no option {opt!r} "
                                    f"(options: {', '.join(sorted(known)) or 'none'})"))

    backend_ref(_get(tree, "default_backend"), ("default_backend",))
    routes = _get(tree, "models")
    if isinstance(routes, list | tuple):
        for i, route in enumerate(routes):
            wanted = _get(route, "backends")
            if isinstance(wanted, list | tuple):
                for j, b in enumerate(wanted):
                    backend_ref(b, ("models", i, "backends", j))
            stage_list(_get(route, "stages"), ("models", i, "stages"))
    stage_list(_get(tree, "default_stages"), ("default_stages",))
    keys = _get(_get(tree, "auth"), "keys")
    if isinstance(keys, list | tuple):
        for i, key in enumerate(keys):
            allowed = _get(key, "stages")
            if isinstance(allowed, list | tuple):
                for j, name in enumerate(allowed):
                    if isinstance(name, str) and name not in STAGES:
                        out.append((("auth", "keys", i, "stages", j), f"unknown stage {name!r} (known: {known_s})"))

    for name, conf in _items(_get(tree, "stages")):
        if name in STAGES:  # also for a stage not built yet: its config still names backends
            _backend_refs(STAGES[name].config, conf, ("stages", name), backends, out)
        if stage_name(name, ("stages", name)) is None:
            continue
        options(name, _get(conf, "defaults"), ("stages", name, "defaults"))
    known_d = ", ".join(DECODERS)
    for name, conf in _items(_get(tree, "decoders")):
        entry = DECODERS.get(name)
        if entry is None:
            out.append((("decoders", name), f"unknown decoder {name!r} (known: {known_d})"))
        elif entry.factory is None:
            out.append((("decoders", name), f"decoder {name!r} is reserved but not available in this version"))
        else:
            _backend_refs(entry.config, conf, ("decoders", name), backends, out)
    return out


def _backend_refs(cls: type[BaseModel], conf: Any, loc: Loc, backends: Any, out: list[tuple[Loc, str]]) -> None:
    """A stage or decoder config's references to backends (``backend_refs``): each must exist and be of
    the type that can run it; then what the config checks itself against the backends (``problems``,
    e.g. artifact files made for a model). A raw config is validated on its own first (errors: the
    schema's)."""
    own = getattr(cls, "problems", None)  # a static method: (raw or validated section, backends) -> problems
    if own is not None and conf is not None:
        plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in _items(backends)}
        out.extend(((*loc, *rel), msg) for rel, msg in own(conf, {k: v for k, v in plain.items()
                                                                   if isinstance(v, Mapping)}))
    if not isinstance(conf, BaseModel):
        try:
            conf = cls.model_validate(conf if conf is not None else {})
        except ValidationError:
            return
    refs = getattr(conf, "backend_refs", None)
    for rel, name, kind in refs() if refs is not None else ():
        where = (*loc, *rel)
        target = _get(backends, name) if backends is not None else None
        if target is None:
            names = ", ".join(sorted(k for k, _ in _items(backends))) or "none"
            out.append((where, f"{name!r} is not a key of backends (known: {names})"))
        elif _backend_type(target) != kind:
            out.append((where, f"backend {name!r} has type {_backend_type(target)!r}; this needs a backend of "
                               f"type {kind!r}"))
