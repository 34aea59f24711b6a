"""Clips: reading videos and frame folders, the clip metrics (TecoGAN's tOF, tLP and table
columns, VMAF), ``score_clip`` and BasicSR's mean over clips.

This ``__init__`` imports nothing: ``losses.clips.means`` is pure Python for the torch-free client.
"""
