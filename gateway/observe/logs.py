"""JSON log lines for the gateway; configured only by the CLI entry point."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from gateway.types import StageStats

__all__ = ["JsonFormatter", "access_log", "configure_logging", "error_log"]

# LogRecord attributes that are not user-supplied ``extra`` fields
_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message", "asctime", "taskName", "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra={...}`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """Route every logger (ours, uvicorn's, grpc's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def access_log(
    logger: logging.Logger,
    api: str,
    request_id: str,
    model: str,
    kind: str,
    stream: bool,
    status: int,
    t0: float,
    overhead_ms: float,
    stats: Sequence[StageStats],
) -> None:
    """The access line of one generation request (``server.access_log``), the same for both front ends:
    request id, model, kind, stream, status, ms since `t0` (``time.perf_counter()`` at arrival), the
    gateway's overhead and the stages' stats. Never any prompt text."""
    logger.info(
        "%s %s %d", "stream" if stream else "request", request_id, status,
        extra={"request_id": request_id, "api": api, "model": model, "kind": kind, "stream": stream,
               "status": status, "ms": round((time.perf_counter() - t0) * 1000, 3),
               "overhead_ms": round(overhead_ms, 3), "stages": [st.to_dict() for st in stats]},
    )  # fmt: skip


def error_log(logger: logging.Logger, api: str, request_id: str | None, status: int, code: str, message: str,
              started: bool = False) -> None:
    """The line for a request answered with an error: INFO for 4xx, WARNING for 5xx and for a stream that
    failed after it started. `message` is the error's own text (which never echoes prompt text)."""
    extra = {"request_id": request_id, "api": api, "status": status, "code": code}
    if started:
        logger.warning("request %s: stream failed after it started: %s", request_id, message, extra=extra)
    else:
        logger.log(logging.WARNING if status >= 500 else logging.INFO,
                   "request %s: %s %s", request_id, status, message, extra=extra)
