"""Quality and speed benchmarks, and the metrics they use."""
