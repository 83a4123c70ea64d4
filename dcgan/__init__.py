"""DCGAN on your own images: data preparation, model, training, generation and metrics.

The stage scripts in stages/ are thin command-line wrappers around these modules.
"""
