"""Gateway configuration: typed schema, environment overrides, loading and validation (``config check``).

One YAML file plus ``PROMPTWIRE_*`` environment overrides, validated at start; every error names the
file (or variable, or command-line option), the key path and the reason."""

from gateway.config.base import ConfigError, Strict
from gateway.config.env import ENV_PREFIX, Loc, Origins, apply_env
from gateway.config.load import (
    EMBEDDED_SOURCE,
    default_config_text,
    load_config,
    load_raw,
    parse_config,
    parse_raw,
    validate_config,
)
from gateway.config.schema import (
    AnyBackend,
    ApiKeyConfig,
    AuthConfig,
    BackendConfig,
    GatewayConfig,
    LimitsConfig,
    LocalBackendConfig,
    ModelRoute,
    OpenAIBackendConfig,
    RetryConfig,
    ServerConfig,
    StageSpec,
    TimeoutConfig,
)
from gateway.config.stages import DecodersConfig, StagesConfig

__all__ = [
    "EMBEDDED_SOURCE",
    "ENV_PREFIX",
    "AnyBackend",
    "ApiKeyConfig",
    "AuthConfig",
    "BackendConfig",
    "ConfigError",
    "DecodersConfig",
    "GatewayConfig",
    "LimitsConfig",
    "Loc",
    "LocalBackendConfig",
    "ModelRoute",
    "OpenAIBackendConfig",
    "Origins",
    "RetryConfig",
    "ServerConfig",
    "StageSpec",
    "StagesConfig",
    "Strict",
    "TimeoutConfig",
    "apply_env",
    "default_config_text",
    "load_config",
    "load_raw",
    "parse_config",
    "parse_raw",
    "validate_config",
]
