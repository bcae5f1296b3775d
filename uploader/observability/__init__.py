"""What an operator sees of a running server: request ids, Prometheus metrics, traces."""
