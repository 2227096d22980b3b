"""The HTTP front end: OpenAI-compatible routes (wire format <-> core types, nothing else)."""
