"""Output formats (templates with typed slots, a regex subset) compiled to token-level automata."""

from __future__ import annotations

from decoders.formats.bytedfa import ByteDFA, compile_bytes
from decoders.formats.nodes import FormatError
from decoders.formats.regex import parse_regex
from decoders.formats.template import parse_template, template_regex
from decoders.formats.tokendfa import FORMAT_KINDS, TokenDFA, build_token_dfa, compile_format
from decoders.formats.tokens import TokenBytes, token_bytes

__all__ = [
    "FORMAT_KINDS",
    "ByteDFA",
    "FormatError",
    "TokenBytes",
    "TokenDFA",
    "build_token_dfa",
    "compile_bytes",
    "compile_format",
    "parse_regex",
    "parse_template",
    "template_regex",
    "token_bytes",
]
