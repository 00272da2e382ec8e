"""Datasets that yield relation items: synthetic scenes (ours), GQA and VSR (real images), and the user's own tasks."""
