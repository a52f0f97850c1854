"""What operators see of a running chatd: metrics (`metrics`), structured logs (`logs`) and
OpenTelemetry traces (`tracing`, the seam the send path uses; `otel`, the SDK behind it)."""
