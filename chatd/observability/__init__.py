"""Metrics (`metrics`) and structured logs (`logs`): what operators see of a running chatd."""
