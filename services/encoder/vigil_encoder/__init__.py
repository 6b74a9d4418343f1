"""Vigil encoder service."""
