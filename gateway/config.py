"""Gateway configuration: one YAML file plus PROMPTWIRE_* environment overrides, validated at start."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    model_path: str | None = None
    """Type local: checkpoint directory or id."""
    structured_choice: Literal["structured_outputs", "guided_choice"] | None = None
    """Type openai: how the upstream constrains output to one of a list (trie labels). vLLM >= 0.12:
    ``structured_outputs``; older vLLM: ``guided_choice``; None: it cannot (labels get a clear 400)."""

    @model_validator(mode="after")
    def _needs_url(self) -> BackendConfig:
        if self.type == "openai" and not self.base_url:
            raise ValueError("type openai needs base_url (e.g. http://127.0.0.1:8000/v1)")
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
        from gateway.stages.base import RESERVED_STAGES

        if self.default_backend is not None and self.default_backend not in self.backends:
            raise ValueError(f"default_backend {self.default_backend!r} is not a key of backends")
        for i, route in enumerate(self.models):
            for b in route.backends:
                if b not in self.backends:
                    raise ValueError(f"models[{i}].backends: {b!r} is not a key of backends")
        specs = [("default_stages", s) for s in self.default_stages]
        for i, route in enumerate(self.models):
            specs += [(f"models[{i}].stages", s) for s in route.stages or ()]
        for where, spec in specs:
            if spec.name not in RESERVED_STAGES:
                raise ValueError(f"{where}: unknown stage {spec.name!r} (known: {', '.join(RESERVED_STAGES)})")
        for name in self.stages:
            if name not in RESERVED_STAGES:
                raise ValueError(f"stages: unknown stage {name!r} (known: {', '.join(RESERVED_STAGES)})")
        return self

    def default_backend_name(self) -> str | None:
        if self.default_backend is not None:
            return self.default_backend
        return next(iter(self.backends), None)


def default_config_text() -> str:
    """The embedded default config (package data): offline, no backend."""
    return resources.files("gateway").joinpath("default.yaml").read_text(encoding="utf-8")


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[path[-1]] = value


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``PROMPTWIRE_A__B__C=value`` overrides (``a.b.c``; value parsed as YAML) to ``raw``."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"environment {name}: empty key segment")
        try:
            value = yaml.safe_load(env[name])
        except yaml.YAMLError as e:
            raise ConfigError(f"environment {name}: not a YAML value: {e}") from None
        _set_path(raw, path, value)
    return raw


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_cross_refs()]", "function-after[_needs_url()]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validate_config(raw: Any, source: str) -> GatewayConfig:
    """Validate a parsed YAML tree; errors name ``source``, the key path and the reason."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {type(raw).__name__}")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {_loc(tuple(err['loc']))}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def parse_raw(text: str, source: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """YAML text -> tree with ``env`` overrides applied (not validated yet)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping, got {type(raw).__name__}")
    tree: dict[str, Any] = raw
    if env:
        tree = apply_env(tree, env)
    return tree


def load_raw(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """FILE's tree (or the embedded default's when None) with env overrides, and its name for errors."""
    env = os.environ if env is None else env
    if path is None:
        return parse_raw(default_config_text(), "<embedded default.yaml>", env), "<embedded default.yaml>"
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    return parse_raw(text, str(p), env), str(p)


def parse_config(text: str, source: str = "<config>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and validate YAML text; ``env`` overrides (default: none)."""
    return validate_config(parse_raw(text, source, env), source)


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load FILE (or the embedded default when None) and apply ``env`` overrides (default os.environ)."""
    raw, source = load_raw(path, env)
    return validate_config(raw, source)
