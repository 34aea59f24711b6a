"""Backbones and what they read: the networks, their weight files (one table), the shared model cache, feature views."""
