"""Composition root: configuration, the Flask app, the CLI and server start-up. Nothing imports it but wsgi.py."""

from gateway.app import create_app

__all__ = ["create_app"]
