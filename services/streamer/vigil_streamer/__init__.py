"""Vigil streamer: decision events in, online features (Feast layout) out."""
