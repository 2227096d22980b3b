"""Gateway configuration: one YAML file plus PROMPTWIRE_* environment overrides, validated at start."""

from __future__ import annotations

import os
import re
import ssl
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "ApiKeyConfig",
    "AuthConfig",
    "BackendConfig",
    "ConfigError",
    "GatewayConfig",
    "LimitsConfig",
    "ModelRoute",
    "RetryConfig",
    "ServerConfig",
    "StageSpec",
    "TimeoutConfig",
    "apply_env",
    "default_config_text",
    "load_config",
    "load_raw",
    "parse_config",
    "parse_raw",
    "validate_config",
]

ENV_PREFIX = "PROMPTWIRE_"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(Exception):
    """The configuration is invalid; the message names the file, the key path and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int | None = Field(default=50051, ge=0, le=65535)
    """None disables the gRPC front end; 0 picks a free port."""
    workers: int = Field(default=1, ge=1, le=64)
    """Processes sharing the ports (SO_REUSEPORT). The gateway is CPU-bound per request: a second
    process on a second core halves queueing under load. Each loads its own local models."""
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    """After SIGTERM: readiness goes false, in-flight requests get this long to finish."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_prompts: bool = False
    """Log prompt text (DEBUG level). Off by default: prompts often hold personal data."""
    access_log: bool = False


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_prompt_chars: int | None = Field(default=2_000_000, gt=0)
    max_prompt_tokens: int | None = Field(default=None, gt=0)
    """Counted with tiktoken cl100k_base; costs ~1 µs per 10 chars, so off unless set."""
    max_in_flight: int = Field(default=1024, gt=0)
    retry_after_s: float = Field(default=1.0, ge=0)
    """Retry-After sent with 429 when max_in_flight is reached."""
    request_timeout_s: float | None = Field(default=600.0, gt=0)
    """Whole-request deadline (504); streams get it too."""


class ApiKeyConfig(_Strict):
    id: str
    sha256: str
    """Hex sha256 of the key (``printf %s "$KEY" | sha256sum``); the key itself is never stored."""
    models: tuple[str, ...] = ("*",)
    """Model names or globs this key may use."""
    stages: tuple[str, ...] | None = None
    """Stages this key may use; None: all the route offers."""

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.lower()
        if not _SHA256.match(v):
            raise ValueError("must be 64 lowercase hex characters (sha256 of the key)")
        return v


class AuthConfig(_Strict):
    keys: tuple[ApiKeyConfig, ...] = ()
    """No keys: authentication is off."""


class TimeoutConfig(_Strict):
    connect_s: float = Field(default=5.0, gt=0)
    read_s: float = Field(default=300.0, gt=0)
    """Longest silence between two reads from the upstream."""
    total_s: float = Field(default=600.0, gt=0)
    """Longest whole upstream exchange, all attempts included."""


class RetryConfig(_Strict):
    max_attempts: int = Field(default=3, ge=1)
    """Attempts per upstream (1 = no retries); failover moves to the next upstream after these."""
    backoff_s: float = Field(default=0.05, ge=0)
    max_backoff_s: float = Field(default=2.0, ge=0)
    max_retry_after_s: float = Field(default=10.0, ge=0)
    """A 429 with a longer Retry-After is not waited for: the error goes to the client."""


class BackendConfig(_Strict):
    type: Literal["openai", "local"] = "openai"
    base_url: str | None = None
    """Upstream API root including /v1, e.g. http://127.0.0.1:8000/v1 (type openai)."""
    api_key: str | None = None
    api_key_env: str | None = None
    """Name of an environment variable holding the upstream key (preferred over api_key)."""
    models: tuple[str, ...] | None = None
    """Models this backend serves; None: discovered from its /v1/models at start."""
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    max_connections: int = Field(default=512, gt=0)
    headers: Mapping[str, str] = Field(default_factory=dict)
    """Extra headers sent upstream with every request."""
    tls_ca_file: str | None = None
    """PEM file of CA certificates to trust for an https base_url (a private CA), relative to the
    working directory; checked at load. None: the system's trust store (or $SSL_CERT_FILE)."""
    tls_verify: bool = True
    """False: do not verify the upstream's certificate (https). Insecure; a warning is logged at start."""
    model_path: str | None = None
    """Type local: checkpoint directory or id."""
    device: str = "auto"
    """Type local: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Type local: weights' dtype; ``auto``: float16 on CUDA, float32 on CPU."""
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    """Type local: rows decoded together (a request with an auxiliary stream takes two)."""
    max_context: int | None = Field(default=None, ge=2)
    """Type local: prompt + output token limit; default: the model's own."""
    structured_choice: Literal["structured_outputs", "guided_choice"] | None = None
    """Type openai: how the upstream constrains output to one of a list (trie labels). vLLM >= 0.12:
    ``structured_outputs``; older vLLM: ``guided_choice``; None: it cannot (labels get a clear 400)."""

    @field_validator("tls_ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = Path(v).expanduser()
        if not p.is_file():
            raise ValueError(f"{v!r} does not exist" if not p.exists() else f"{v!r} is not a regular file")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(p))
        except OSError as e:  # before ssl.SSLError: that is an OSError too
            if isinstance(e, ssl.SSLError):
                raise ValueError(f"{v!r} holds no usable PEM CA certificate ({e.reason or e})") from None
            raise ValueError(f"cannot read {v!r}: {e.strerror or e}") from None
        return str(p)

    @field_validator("headers")
    @classmethod
    def _header_text(cls, v: Mapping[str, str]) -> Mapping[str, str]:
        for k, val in v.items():
            if not k or not k.isascii() or not k.isprintable() or any(c in k for c in " :"):
                raise ValueError(f"header name {k!r} is not a valid HTTP header name")
            if not val.isprintable():
                raise ValueError(f"header {k!r}: the value has control characters (CR, LF, ...)")
        return v
    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError(f"{v!r} has spaces or control characters")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{v!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)")
        try:
            host, _port = parts.hostname, parts.port
        except ValueError as e:  # a port that is not a number or out of range
            raise ValueError(f"{v!r}: {e}") from None
        if not host:
            raise ValueError(f"{v!r} has no host")
        if parts.username is not None or parts.password is not None:  # not echoed: it holds a secret
            raise ValueError("credentials in the URL (user:password@) are not sent; use api_key_env, api_key or headers")
        if parts.fragment:
            raise ValueError("a fragment (#...) is not sent upstream; remove it")
        return v

    @model_validator(mode="after")
    def _needs_target(self) -> BackendConfig:
        if self.type == "openai" and not self.base_url:
            raise ValueError("type openai needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.type == "local" and not self.model_path:
            raise ValueError("type local needs model_path (a checkpoint directory or Hugging Face id)")
        return self


class StageSpec(_Strict):
    name: str
    enabled: bool = True
    """Runs by default; False: only when a client asks for it (if client_can_enable)."""
    options: Mapping[str, Any] = Field(default_factory=dict)
    client_options: tuple[str, ...] = ()
    """Option names clients may set through the extension object; ("*",) allows all."""
    client_can_disable: bool = True
    client_can_enable: bool = True


class ModelRoute(_Strict):
    match: str
    """Model name or glob (``gpt-4o*``, ``*``); first matching route wins."""
    backends: tuple[str, ...] = ()
    """Backends in failover order; empty: the backend(s) that list the model, else default_backend."""
    upstream_model: str | None = None
    """Name to send upstream instead of the client's model name."""
    stages: tuple[StageSpec, ...] | None = None
    """Ordered pipeline; None: ``default_stages``."""


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    backends: Mapping[str, BackendConfig] = Field(default_factory=dict)
    default_backend: str | None = None
    """Where models no route or backend claims go; defaults to the first backend."""
    models: tuple[ModelRoute, ...] = ()
    default_stages: tuple[StageSpec, ...] = ()
    stages: Mapping[str, Mapping[str, Any]] = Field(default_factory=dict)
    """Per-stage construction config (``stages.compress.model: DIR``), passed to the stage factory."""
    otel: bool = False
    """Emit OpenTelemetry spans when opentelemetry is installed."""

    @model_validator(mode="after")
    def _cross_refs(self) -> GatewayConfig:
        problems = _xref_problems(self)
        if problems:  # validate_config reports each at its own key path, from the raw tree
            raise PydanticCustomError(
                _XREF_ERROR, "; ".join(f"{_loc(loc)}: {msg}" for loc, msg in problems)
            )
        return self

    def default_backend_name(self) -> str | None:
        if self.default_backend is not None:
            return self.default_backend
        return next(iter(self.backends), None)


_XREF_ERROR = "cross_reference"

Loc = tuple[int | str, ...]


def _get(node: Any, key: str) -> Any:
    """``key`` of a raw mapping or a validated model (None when absent or of the wrong kind)."""
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None) if isinstance(node, BaseModel) else None


def _xref_problems(tree: Any) -> list[tuple[Loc, str]]:
    """Names that must refer to a backend or a stage and do not, each with its key path. Works on the
    raw tree too (skipping parts of the wrong shape), so these are reported beside field errors."""
    from gateway.stages.base import RESERVED_STAGES

    out: list[tuple[Loc, str]] = []
    backends = _get(tree, "backends")
    names = set(backends) if isinstance(backends, Mapping) else set() if backends is None else None
    known_b = ", ".join(sorted(map(str, names or ()))) or "none"
    known_s = ", ".join(RESERVED_STAGES)

    default = _get(tree, "default_backend")
    if names is not None and isinstance(default, str) and default not in names:
        out.append((("default_backend",), f"{default!r} is not a key of backends (known: {known_b})"))

    def stage_list(value: Any, loc: Loc) -> None:
        if isinstance(value, (list, tuple)):
            for j, spec in enumerate(value):
                name = _get(spec, "name")
                if isinstance(name, str) and name not in RESERVED_STAGES:
                    out.append(((*loc, j, "name"), f"unknown stage {name!r} (known: {known_s})"))

    routes = _get(tree, "models")
    if isinstance(routes, (list, tuple)):
        for i, route in enumerate(routes):
            wanted = _get(route, "backends")
            if names is not None and isinstance(wanted, (list, tuple)):
                for j, b in enumerate(wanted):
                    if isinstance(b, str) and b not in names:
                        out.append((("models", i, "backends", j), f"{b!r} is not a key of backends (known: {known_b})"))
            stage_list(_get(route, "stages"), ("models", i, "stages"))
    stage_list(_get(tree, "default_stages"), ("default_stages",))
    stages = _get(tree, "stages")
    if isinstance(stages, Mapping):
        for name in stages:
            if name not in RESERVED_STAGES:
                out.append((("stages", name), f"unknown stage {name!r} (known: {known_s})"))
    return out


def default_config_text() -> str:
    """The embedded default config (package data): offline, no backend."""
    return resources.files("gateway").joinpath("default.yaml").read_text(encoding="utf-8")


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (YAML leaves it to the loader; the usual
    last-one-wins hides typos such as two ``server:`` sections)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor``: its keys may be overridden, that is what it is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first given on line {first})")


def _yaml_load(text: str) -> Any:
    """Parse YAML (safe tags only); raises yaml.YAMLError or _DuplicateKey."""
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader


Origins = dict[Loc, str]
"""Key paths whose value did not come from the file, and where it came from (``environment
PROMPTWIRE_X``, ``command line --http-port``): errors there name that instead of the file."""


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


def _shape(annotation: Any) -> tuple[str, Any]:
    """What a field holds, for walking an env path: ("model", cls), ("map", value type), ("list", None),
    ("any", None) or ("scalar", None)."""
    if annotation is Any:
        return "any", None
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _shape(members[0]) if len(members) == 1 else ("scalar", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    if origin in (Mapping, dict) or annotation in (Mapping, dict):
        args = typing.get_args(annotation)
        return "map", args[1] if len(args) == 2 else Any
    if origin in (tuple, list) or annotation in (tuple, list):
        return "list", None
    return "scalar", None


def _env_path(name: str) -> str:
    return ".".join(name[len(ENV_PREFIX) :].split("__")).lower()


def apply_env(raw: dict[str, Any], env: Mapping[str, str], origins: Origins | None = None) -> dict[str, Any]:
    """Apply ``PROMPTWIRE_A__B__C=value`` overrides (key path ``a.b.c``; the value is parsed as YAML) to
    ``raw``. Each segment matches a key already in the tree (or a field name) ignoring case, with ``_``
    and ``-`` alike, so ``PROMPTWIRE_BACKENDS__MY_TGI__BASE_URL`` sets ``backends.my-tgi.base_url``.
    ``origins`` (when given) records which key paths came from which variable."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        segments = name[len(ENV_PREFIX) :].split("__")
        label = f"environment {name}"
        if any(not p for p in segments):
            raise ConfigError(f"{label}: empty key segment")
        try:
            value = _yaml_load(env[name])
        except (yaml.YAMLError, _DuplicateKey) as e:
            # Without the text: the value may be a secret (an API key).
            why = str(e) if isinstance(e, _DuplicateKey) else getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"{label}: not a YAML value: {why}") from None
        _set_env_value(raw, segments, value, label, origins)
    return raw


def _set_env_value(raw: dict[str, Any], segments: list[str], value: Any, label: str,
                   origins: Origins | None) -> None:
    node: dict[Any, Any] = raw
    shape: tuple[str, Any] = ("model", GatewayConfig)
    path: list[str] = []
    for i, seg in enumerate(segments):
        kind, arg = shape
        if kind == "list":
            whole = f" ({ENV_PREFIX}{'__'.join(segments[:i])}='[...]')" if i >= 2 else " in the file"
            raise ConfigError(
                f"{label}: {'.'.join(path)} is a list; the environment cannot set one of its items "
                f"({seg!r}). Give the whole list as one YAML value{whole}"
            )
        if kind == "scalar":
            raise ConfigError(f"{label}: {'.'.join(path)} is a single value, it has no key {seg!r}")
        if kind == "model":
            fields = [f for f in arg.model_fields if _norm(f) == _norm(seg)]
            key = fields[0] if fields else seg.lower()  # unknown: validation names it (extra key)
            shape = _shape(arg.model_fields[key].annotation) if fields else ("any", None)
        else:
            matches = [k for k in node if isinstance(k, str) and _norm(k) == _norm(seg)]
            if len(matches) > 1:
                raise ConfigError(
                    f"{label}: {seg!r} matches several keys of {'.'.join(path) or '(top level)'} "
                    f"({', '.join(map(repr, matches))}); rename one so they differ in more than case, '-' and '_'"
                )
            key = matches[0] if matches else seg.lower()
            shape = _shape(arg) if kind == "map" else ("any", None)
        path.append(key)
        if i == len(segments) - 1:
            node[key] = value
            if origins is not None:
                origins[tuple(path)] = label
            return
        nxt = node.get(key)
        if isinstance(nxt, list):
            shape = ("list", None)
        if shape[0] in ("list", "scalar"):
            continue  # the next segment reports it
        if nxt is None:
            nxt = node[key] = {}
            if origins is not None:
                origins.setdefault(tuple(path), label)
        elif not isinstance(nxt, dict):
            raise ConfigError(
                f"{label}: {'.'.join(path)} holds a value of type {type(nxt).__name__}, not a mapping"
            )
        node = nxt


def _loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("function-"):
            continue  # a model validator's wrapper, not a key
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _keys(loc: Loc) -> Loc:
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _origin(loc: Loc, origins: Origins) -> str | None:
    """Where the value at ``loc`` came from, when not from the file: the longest recorded prefix."""
    for n in range(len(loc), 0, -1):
        label = origins.get(loc[:n])
        if label is not None:
            return label
    return None


def validate_config(raw: Any, source: str, origins: Origins | None = None) -> GatewayConfig:
    """Validate a parsed YAML tree; each error names ``source`` (or the environment variable or
    command-line option the value came from, per ``origins``), the key path and the reason. All
    errors are reported, cross references (backend and stage names) included."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {type(raw).__name__}")
    problems: list[tuple[Loc, str]] = []
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as e:
        xref = [((), err["msg"]) for err in e.errors() if err["type"] == _XREF_ERROR]
        problems = [(_keys(tuple(err["loc"])), err["msg"].removeprefix("Value error, "))
                    for err in e.errors() if err["type"] != _XREF_ERROR]
    # Cross references, one line per key path, from the raw tree: also when fields have errors.
    problems += _xref_problems(raw) or xref
    lines = []
    for loc, msg in problems:
        line = f"{(_origin(loc, origins or {}) or source)}: {_loc(loc)}: {msg}"
        if line not in lines:
            lines.append(line)
    raise ConfigError("\n".join(lines))


def parse_raw(
    text: str, source: str, env: Mapping[str, str] | None = None, origins: Origins | None = None
) -> dict[str, Any]:
    """YAML text -> tree with ``env`` overrides applied (not validated yet)."""
    try:
        raw = _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    except _DuplicateKey as e:
        raise ConfigError(f"{source}: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {type(raw).__name__}")
    tree: dict[str, Any] = raw
    if env:
        tree = apply_env(tree, env, origins)
    return tree


EMBEDDED_SOURCE = "<embedded default.yaml>"


def load_raw(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None, origins: Origins | None = None
) -> tuple[dict[str, Any], str]:
    """FILE's tree (or the embedded default's when None) with env overrides, and its name for errors."""
    env = os.environ if env is None else env
    if path is None:
        return parse_raw(default_config_text(), EMBEDDED_SOURCE, env, origins), EMBEDDED_SOURCE
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    return parse_raw(text, str(p), env, origins), str(p)


def parse_config(text: str, source: str = "<config>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and validate YAML text; ``env`` overrides (default: none)."""
    origins: Origins = {}
    return validate_config(parse_raw(text, source, env, origins), source, origins)


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load FILE (or the embedded default when None) and apply ``env`` overrides (default os.environ)."""
    origins: Origins = {}
    raw, source = load_raw(path, env, origins)
    return validate_config(raw, source, origins)
