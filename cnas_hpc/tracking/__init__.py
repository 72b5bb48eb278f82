"""Trackers (floor 4): adapters of the apps' observer protocols (terminal progress, W&B runs)."""
