"""promptwire protos."""
