"""Jinja templates (package data): one per kernel family per backend, one decode macro file per format family."""
