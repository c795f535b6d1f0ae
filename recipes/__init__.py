"""Offline recipes, not part of the installed package: how the data and checkpoints that ship with spectax were made.

Run them from the repository root (`python recipes/build_prompts.py`, `python recipes/cos_contrastive.py`).
"""
