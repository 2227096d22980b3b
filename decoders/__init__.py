"""promptwire decoders."""
