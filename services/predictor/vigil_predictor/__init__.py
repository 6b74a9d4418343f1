"""Vigil predictor service."""
