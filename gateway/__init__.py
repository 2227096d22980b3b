"""promptwire gateway."""
