"""promptwire protobuf definitions."""
