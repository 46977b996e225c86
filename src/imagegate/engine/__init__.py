"""Local inference with diffusers: finding weights, loading pipelines, and the worker that owns
each.

Importing this package does not import torch; the heavy imports happen when a model first loads,
so the gateway runs without the `local` extra installed.
"""
