"""Retrieval methods: phase, transmission and dark field from speckle images.

Each method lives in a module named after it and offers a plain function
(arrays in, arrays out) plus a :class:`~xspeckle.retrieve.base.Retriever` class used by
the command line and the pipeline.  :func:`get_method` looks a method up by its
command-line name without importing the others.
"""

from __future__ import annotations

import importlib

from xspeckle.errors import MethodUnavailableError

__all__ = ["METHODS", "get_method", "available_methods", "make_retriever"]

#: command-line name -> (module, Retriever class)
METHODS: dict[str, tuple[str, str]] = {
    "pwf": ("xspeckle.retrieve.pwf", "PWFRetriever"),
    "mist": ("xspeckle.retrieve.mist", "MISTRetriever"),
    "mist-directional": ("xspeckle.retrieve.mist_directional", "DirectionalMISTRetriever"),
    "lcs": ("xspeckle.retrieve.lcs", "LCSRetriever"),
    "lcs-df": ("xspeckle.retrieve.lcs", "LCSDFRetriever"),
    "lcs-ddf": ("xspeckle.retrieve.lcs", "LCSDDFRetriever"),
    "umpa": ("xspeckle.retrieve.umpa", "UMPARetriever"),
    "xsvt": ("xspeckle.retrieve.xsvt", "XSVTRetriever"),
    "of": ("xspeckle.retrieve.optical_flow", "OpticalFlowRetriever"),
    "tie": ("xspeckle.retrieve.tie", "TIERetriever"),
}


def get_method(name: str):
    """Return the Retriever class of a method, or raise :class:`MethodUnavailableError`."""
    if name not in METHODS:
        raise MethodUnavailableError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    mod_name, cls_name = METHODS[name]
    try:
        mod = importlib.import_module(mod_name)
        return getattr(mod, cls_name)
    except (ImportError, AttributeError):
        raise MethodUnavailableError(f"method {name!r} is not available yet in this version of xspeckle") from None


def available_methods() -> list[str]:
    """Names of the methods that import in this installation."""
    out = []
    for n in METHODS:
        try:
            get_method(n)
            out.append(n)
        except MethodUnavailableError:
            pass
    return out


def make_retriever(name: str, reference, geometry, **params):
    """Build the retriever of method *name* for a reference stack ``(P, H, W)``."""
    return get_method(name)(reference, geometry, **params)
