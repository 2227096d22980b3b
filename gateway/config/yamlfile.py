"""Safe YAML for config files: duplicate keys are errors (the usual last-one-wins hides typos)."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKey", "yaml_load"]


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
                    raise DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


class DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first given on line {first})")


def yaml_load(text: str) -> Any:
    """Parse YAML (safe tags only); raises yaml.YAMLError or DuplicateKey."""
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
