"""Backends behind one interface: the local diffusers engine and upstream image APIs."""

from .base import Provider

__all__ = ["Provider"]
