"""Runs inside the LiteLLM environment (not collected by pytest): drives litellm.acompletion with the
promptwire callback against a fake upstream, one scenario per argument set, and prints JSON results.

    .venv-litellm/bin/python tests/compressors/litellm_sdk_check.py SPEC_JSON
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from compressors.llmlingua2.litellm_callback import PromptwireCompression


class Seen(CustomLogger):  # type: ignore[misc]
    """Records the metadata LiteLLM logs for each successful call."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, Any]] = []
        self.logged = asyncio.Event()

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.metadata.append(dict((kwargs.get("litellm_params") or {}).get("metadata") or {}))
        self.logged.set()


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def scenario(spec: dict[str, Any], upstream: str, case: dict[str, Any], cb: PromptwireCompression,
                   seen: Seen) -> dict[str, Any]:
    # LiteLLM keeps the callback objects it first saw: one instance each, reconfigured per case
    cb.__dict__.update(PromptwireCompression(**case["callback"]).__dict__)
    seen.metadata.clear()
    seen.logged.clear()
    warnings = Warnings()
    logging.getLogger("compressors.llmlingua2.litellm_callback").addHandler(warnings)
    resp = await litellm.acompletion(
        model=case.get("model", "openai/test-model"), api_base=upstream, api_key="sk-test",
        messages=spec["messages"], metadata=case.get("metadata", {}), max_tokens=8,
    )
    await asyncio.wait_for(seen.logged.wait(), 120)  # success callbacks run in the background
    logging.getLogger("compressors.llmlingua2.litellm_callback").removeHandler(warnings)
    meta = seen.metadata[-1] if seen.metadata else {}
    return {"answer": resp.choices[0].message.content, "stats": (meta.get("promptwire") or {}).get("compress_stats"),
            "warnings": warnings.lines}


async def main() -> None:
    spec = json.loads(sys.argv[1])
    cb, seen = PromptwireCompression(), Seen()
    litellm.callbacks = [cb, seen]
    out = [await scenario(spec, spec["upstream"], case, cb, seen) for case in spec["cases"]]
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
