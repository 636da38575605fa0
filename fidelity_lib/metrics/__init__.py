"""Evaluation metrics over a folder of generated images laid out as ``<out>/<method>/<prompt>/<seed>.png``."""
