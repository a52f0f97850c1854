"""HTTP surface: the Quart-Trio app (``/api/chat/*``, ``/health/*``) and its error mapping."""

from chatd.http.app import create_app

__all__ = ["create_app"]
