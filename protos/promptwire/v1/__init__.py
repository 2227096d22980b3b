"""Generated modules of the promptwire.v1 protobuf package (regenerate with protos/generate.py)."""
