"""The gRPC front end: promptwire.v1.Gateway, health and reflection (protobuf <-> core types)."""
