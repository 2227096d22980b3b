"""The gateway core: policy (auth, admission, limits), routing (backends, failover), the pipeline."""
