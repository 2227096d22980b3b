"""The typed configuration: one class per section, per backend type (stage classes: config/stages.py)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.config.base import Strict
from gateway.config.stages import DecodersConfig, StagesConfig

__all__ = [
    "AnyBackend",
    "ApiKeyConfig",
    "AuthConfig",
    "BackendConfig",
    "GatewayConfig",
    "LimitsConfig",
    "LocalBackendConfig",
    "ModelRoute",
    "OpenAIBackendConfig",
    "RetryConfig",
    "ServerConfig",
    "StageSpec",
    "TimeoutConfig",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ServerConfig(Strict):
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
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """A health-only listener: gRPC health and HTTP /healthz /readyz on this port and nothing else. For a
    sidecar whose API listens on localhost while the kubelet probes the pod IP. None: off; 0: a free port."""
    health_host: str = "0.0.0.0"
    """Interface of the health-only listener: all of them by default (it serves no data)."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) the gateway presents: HTTPS and gRPC over TLS on both ports; needs
    ``tls_key_file``. Relative to the working directory; checked at load."""
    tls_key_file: str | None = None
    """PEM private key of ``tls_cert_file``."""
    playground: bool = False
    """Serve the compression playground at /playground (docs/playground.md): a static page whose
    compressions are /v1/compress calls made with the API key typed into it."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        if self.health_port:
            if self.health_port == self.http_port:
                raise ValueError(f"health_port {self.health_port} is also http_port; give it a port of its own")
            if self.health_port == self.grpc_port:
                raise ValueError(f"health_port {self.health_port} is also grpc_port; give it a port of its own")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        cert, key = self.tls_cert_file, self.tls_key_file
        if (cert is None) != (key is None):
            raise ValueError("tls_cert_file and tls_key_file go together (set both, or neither for plain text)")
        if cert is not None and key is not None:
            for name, v in (("tls_cert_file", cert), ("tls_key_file", key)):
                p = Path(v).expanduser()
                if not p.is_file():
                    raise ValueError(f"{name}: {v!r} " + ("does not exist" if not p.exists() else "is not a file"))
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except ssl.SSLError as e:
                raise ValueError(f"tls_cert_file / tls_key_file: not a matching PEM certificate and key "
                                 f"({e.reason or e})") from None
            except OSError as e:
                raise ValueError(f"tls_cert_file / tls_key_file: cannot read: {e.strerror or e}") from None
        return self


class LimitsConfig(Strict):
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_prompt_chars: int | None = Field(default=2_000_000, gt=0)
    max_prompt_tokens: int | None = Field(default=None, gt=0)
    """Counted with tiktoken cl100k_base; costs ~1 µs per 10 chars, so off unless set."""
    max_in_flight: int = Field(default=1024, gt=0)
    retry_after_s: float = Field(default=1.0, ge=0)
    """Retry-After sent with 429 when max_in_flight is reached."""
    request_timeout_s: float | None = Field(default=600.0, gt=0)
    """Whole-request deadline (504); streams get it too."""
    max_n: int = Field(default=128, ge=1, le=128)
    """Largest ``n`` (choices per request) a client may ask for; OpenAI's own limit is 128."""


class ApiKeyConfig(Strict):
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


class AuthConfig(Strict):
    keys: tuple[ApiKeyConfig, ...] = ()
    """No keys: authentication is off. With keys, every route but /healthz and /readyz needs one."""
    metrics_public: bool = False
    """Serve /metrics without a key (a Prometheus scraper inside the cluster); off: it needs one too."""


class TimeoutConfig(Strict):
    connect_s: float = Field(default=5.0, gt=0)
    read_s: float = Field(default=300.0, gt=0)
    """Longest silence between two reads from the upstream."""
    total_s: float = Field(default=600.0, gt=0)
    """Longest whole upstream exchange, all attempts included."""


class RetryConfig(Strict):
    max_attempts: int = Field(default=3, ge=1)
    """Attempts per upstream (1 = no retries); failover moves to the next upstream after these."""
    backoff_s: float = Field(default=0.05, ge=0)
    max_backoff_s: float = Field(default=2.0, ge=0)
    max_retry_after_s: float = Field(default=10.0, ge=0)
    """A 429 with a longer Retry-After is not waited for: the error goes to the client."""


class _Backend(Strict):
    models: tuple[str, ...] | None = None
    """Models this backend serves; None: discovered from the upstream's /v1/models at start (type openai),
    or the model's own name (type local)."""


class OpenAIBackendConfig(_Backend):
    """``type: openai``: an OpenAI-compatible upstream (vLLM, TGI, OpenAI, ...)."""

    type: Literal["openai"] = "openai"
    base_url: str
    """Upstream API root including /v1, e.g. http://127.0.0.1:8000/v1."""
    api_key: str | None = None
    api_key_env: str | None = None
    """Name of an environment variable holding the upstream key (preferred over api_key)."""
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    max_connections: int = Field(default=512, gt=0)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest whole response (and largest streamed event) taken from this upstream; more is a 502
    (the connection is dropped), so a runaway upstream cannot fill the gateway's memory."""
    headers: Mapping[str, str] = Field(default_factory=dict)
    """Extra headers sent upstream with every request."""
    tls_ca_file: str | None = None
    """PEM file of CA certificates to trust for an https base_url (a private CA), relative to the
    working directory; checked at load. None: the system's trust store (or $SSL_CERT_FILE)."""
    tls_verify: bool = True
    """False: do not verify the upstream's certificate (https). Insecure; a warning is logged at start."""
    structured_choice: Literal["structured_outputs", "guided_choice"] | None = None
    """How the upstream constrains output to one of a list (trie labels). vLLM >= 0.12:
    ``structured_outputs``; older vLLM: ``guided_choice``; None: it cannot (labels get a clear 400)."""
    openai_limits: bool = True
    """Check requests against OpenAI's limits (temperature 0-2, top_p 0-1, penalties -2..2, roles, at most
    4 stop sequences, ...; gateway/core/fields.py) before sending them here. False for servers that accept
    more (vLLM): the values go through unchecked when every backend of the route says so (``n`` and
    ``max_tokens`` are checked for every backend)."""

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
    def _http_url(cls, v: str) -> str:
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


class LocalBackendConfig(_Backend):
    """``type: local``: a model served in-process by promptwire's decode engine (every decoder)."""

    type: Literal["local"]
    model_path: str
    """Checkpoint directory, Hugging Face id, or ``tiny:llama|gpt2|qwen2`` (a stand-in built locally)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights' dtype; ``auto``: float16 on CUDA, float32 on CPU."""
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    """Rows decoded together (a request with an auxiliary stream takes two)."""
    max_context: int | None = Field(default=None, ge=2)
    """Prompt + output token limit; default: the model's own."""

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
            return v
        raise ValueError(f"{v!r} is not a device: auto, cpu, cuda or cuda:N")


def _backend_type(v: Any) -> str:
    kind = v.get("type", "openai") if isinstance(v, Mapping) else getattr(v, "type", "openai")
    return str(kind)


BackendConfig = Annotated[
    Annotated[OpenAIBackendConfig, Tag("openai")] | Annotated[LocalBackendConfig, Tag("local")],
    Discriminator(_backend_type, custom_error_type="backend_type",
                  custom_error_message="type must be 'openai' or 'local'"),
]
"""``backends.<name>``: one class per backend ``type`` (default ``openai``)."""
AnyBackend = OpenAIBackendConfig | LocalBackendConfig


class StageSpec(Strict):
    name: str
    enabled: bool = True
    """Runs by default; False: only when a client asks for it (if client_can_enable)."""
    options: Mapping[str, Any] = Field(default_factory=dict)
    client_options: tuple[str, ...] = ()
    """Option names clients may set through the extension object; ("*",) allows all."""
    client_can_disable: bool = True
    client_can_enable: bool = True


class ModelRoute(Strict):
    match: str
    """Model name or glob (``gpt-4o*``, ``*``); first matching route wins."""
    backends: tuple[str, ...] = ()
    """Backends in failover order; empty: the backend(s) that list the model, else default_backend."""
    upstream_model: str | None = None
    """Name to send upstream instead of the client's model name."""
    stages: tuple[StageSpec, ...] | None = None
    """Ordered pipeline; None: ``default_stages``."""


class GatewayConfig(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    backends: Mapping[str, BackendConfig] = Field(default_factory=dict)
    default_backend: str | None = None
    """Where models no route or backend claims go; defaults to the first backend."""
    models: tuple[ModelRoute, ...] = ()
    default_stages: tuple[StageSpec, ...] = ()
    stages: StagesConfig = Field(default_factory=StagesConfig)
    """Per-stage construction config (``stages.compress.model: DIR``), passed to the stage factory."""
    decoders: DecodersConfig = Field(default_factory=DecodersConfig)
    """Per-decoder config (``decoders.decog.hmms``)."""
    otel: bool = False
    """Emit OpenTelemetry spans when opentelemetry is installed."""

    @model_validator(mode="after")
    def _cross_refs(self) -> GatewayConfig:
        from gateway.config.check import XREF_ERROR, format_loc, problems

        found = problems(self)
        if found:  # validate_config reports each at its own key path, from the raw tree
            raise PydanticCustomError(XREF_ERROR, "; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in found))
        return self

    def backend(self, name: str) -> AnyBackend:
        """``backends.<name>`` (KeyError when absent)."""
        return self.backends[name]

    def default_backend_name(self) -> str | None:
        if self.default_backend is not None:
            return self.default_backend
        return next(iter(self.backends), None)
