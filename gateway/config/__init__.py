"""Gateway configuration: typed schema, environment overrides, loading and `config check`."""

from gateway.config.schema import *  # noqa: F403
from gateway.config.schema import EMBEDDED_SOURCE, ENV_PREFIX, Origins, __all__  # noqa: F401
