"""promptwire compressors."""
