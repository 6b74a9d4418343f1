"""Vigil offline tooling: world generator, feature pipeline, training, batch scoring, runner."""
