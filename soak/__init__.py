"""The soak and chaos run (issue 22): `scripts/soak` / ``python -m soak``."""
