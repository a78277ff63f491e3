"""Bundled telluric / bad-region masks."""
