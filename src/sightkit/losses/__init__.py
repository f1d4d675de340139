"""Losses, each as a function and as an ``nn.Module`` that holds its hyper-parameters."""

from sightkit._api import build_namespace

__all__ = build_namespace(__name__, globals())
