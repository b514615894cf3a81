"""Runnable examples of DLHub (each sub-package has a README)."""
