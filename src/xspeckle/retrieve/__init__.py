"""Retrieval methods: phase, transmission and dark field from speckle images.

Each method lives in a module named after it and offers a plain function
(arrays in, arrays out) plus a :class:`~xspeckle.retrieve.base.Retriever` class used by
the command line and the pipeline.  :func:`get_method` looks a method up by its
command-line name without importing the others.

Adding a method: one new module with a Retriever subclass (class attributes ``name``, ``outputs``,
``min_positions`` and a one-line ``summary``) plus one line in :data:`METHODS`; ``xspeckle retrieve
--help``, :func:`available_methods` and the README check (tests/test_registry.py) read the registry.
"""

from __future__ import annotations

import importlib

from xspeckle.errors import MethodUnavailableError, XSpeckleError

__all__ = ["METHODS", "MethodBrokenError", "get_method", "available_methods", "make_retriever", "method_status"]

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

#: import name -> what to install, for the optional dependencies (pyproject.toml extras)
_INSTALL = {
    "cupy": "'xspeckle[gpu]'",
    "cupyx": "'xspeckle[gpu]'",
    "dask": "'xspeckle[dask]'",
    "distributed": "'xspeckle[dask]'",
    "pyfftw": "'xspeckle[fast]'",
    "fabio": "'xspeckle[edf]'",
    "algotom": "'xspeckle[tomo]'",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "yaml": "pyyaml",
}


class MethodBrokenError(XSpeckleError, RuntimeError):
    """A registered method whose own code fails to import (a bug in xspeckle, not a missing package)."""


def _third_party(exc: BaseException) -> str | None:
    """Top-level name of the missing third-party package behind an ImportError, else None."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not name:
        return None
    top = name.split(".")[0]
    return None if top == "xspeckle" else top


def get_method(name: str):
    """Return the Retriever class of a method.

    Raises
    ------
    MethodUnavailableError
        Unknown name, or the method needs a third-party package that is not installed:
        ``method 'X' needs missing dependency 'Y' (pip install ...)``.
    MethodBrokenError
        The method's own code does not import (an ImportError or AttributeError inside xspeckle, a
        syntax error, ...): ``method 'X' is broken: <cause>``, chained to the original exception.
    """
    if name not in METHODS:
        raise MethodUnavailableError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    mod_name, cls_name = METHODS[name]
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - sorted into missing dependency / broken below
        dep = _third_party(exc)
        if dep is not None:
            pip = _INSTALL.get(dep, dep)
            if isinstance(exc, ModuleNotFoundError):
                raise MethodUnavailableError(
                    f"method {name!r} needs missing dependency {dep!r} (pip install {pip})") from None
            raise MethodUnavailableError(
                f"method {name!r} needs a compatible {dep!r}: {exc} (pip install -U {pip})") from None
        raise MethodBrokenError(f"method {name!r} is broken: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(mod, cls_name)
    except AttributeError as exc:
        raise MethodBrokenError(f"method {name!r} is broken: {mod_name} defines no {cls_name} "
                                f"(registry line in xspeckle.retrieve.METHODS)") from exc


def method_status(name: str) -> tuple[str, object]:
    """``("ok", cls)``, ``("unavailable", message)`` or ``("broken", message)`` for a registered method."""
    try:
        return "ok", get_method(name)
    except MethodBrokenError as exc:
        return "broken", str(exc)
    except MethodUnavailableError as exc:
        return "unavailable", str(exc)


def available_methods() -> list[str]:
    """Names of the methods that import in this installation.

    A method whose optional dependency is missing is left out; a broken one raises
    :class:`MethodBrokenError` (it is never silently hidden).
    """
    out = []
    for n in METHODS:
        try:
            get_method(n)
            out.append(n)
        except MethodBrokenError:
            raise
        except MethodUnavailableError:
            pass
    return out


def make_retriever(name: str, reference, geometry, **params):
    """Build the retriever of method *name* for a reference stack ``(P, H, W)``."""
    return get_method(name)(reference, geometry, **params)
