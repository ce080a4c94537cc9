"""Check method parameters (``--param KEY=VALUE``) against the retriever's signature.

A retriever's keyword arguments are its parameters.  :func:`check_params` rejects, with
one line that lists the valid names, a key the method does not take, and a value of the
wrong kind (text where a number is expected, a list for a scalar, NaN/inf), before any
frame is read.  Kinds come from the annotation (``float | None``, ``int``, ``bool``,
``str``) or, without one, from the default value.  Ranges are each method's own business;
the pipeline also rejects non-finite or degenerate output maps (``docs/reliability.md``).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Mapping

from xspeckle.errors import ParameterError

__all__ = ["parameter_names", "check_params"]

_SKIP = ("self", "reference", "geometry")


def _signature_params(cls) -> tuple[dict[str, inspect.Parameter], bool]:
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # builtins or exotic callables: nothing to check
        return {}, True
    ps = {n: p for n, p in sig.parameters.items() if n not in _SKIP
          and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    var_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return ps, var_kw


def parameter_names(cls) -> list[str] | None:
    """Parameter names a Retriever class takes, or ``None`` when it takes ``**params`` (it checks them itself)."""
    ps, var_kw = _signature_params(cls)
    return None if var_kw else list(ps)


def _kinds(p: inspect.Parameter) -> set[str] | None:
    """Allowed kinds {"number", "int", "bool", "str", "none"}; None = anything."""
    ann = p.annotation
    if ann is not inspect.Parameter.empty:
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        words = set(re.findall(r"[A-Za-z_]+", str(text))) - {"Optional", "typing"}
        table = {"float": "number", "int": "int", "bool": "bool", "str": "str", "None": "none", "NoneType": "none"}
        if words and words <= set(table):
            return {table[w] for w in words}
        return None
    d = p.default
    if d is inspect.Parameter.empty or d is None:
        return None
    if isinstance(d, bool):
        return {"bool"}
    if isinstance(d, int):
        return {"int"}
    if isinstance(d, float):
        return {"number"}
    if isinstance(d, str):
        return {"str"}
    return None


def _describe(kinds: set[str]) -> str:
    names = {"number": "a number", "int": "a whole number", "bool": "true or false", "str": "a text value",
             "none": "null"}
    return " or ".join(names[k] for k in ("number", "int", "bool", "str", "none") if k in kinds)


def _ok(value: Any, kinds: set[str]) -> bool:
    if value is None:
        return "none" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, (int, float)):
        if not math.isfinite(float(value)):
            return False
        if "number" in kinds:
            return True
        return "int" in kinds and float(value).is_integer()
    if isinstance(value, str):
        return "str" in kinds
    return False


def check_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check parameters; return them with whole-number floats made ``int`` where an int is expected.

    Parameters
    ----------
    cls : type
        A Retriever class (``xspeckle.retrieve.get_method(name)``).
    params : mapping
        The parameters as the user gave them (JSON-decoded ``--param`` values).

    Returns
    -------
    dict
        The parameters, ``5.0`` turned into ``5`` for integer parameters.

    Raises
    ------
    ParameterError
        One line naming the method, the key and the valid keys (or the expected kind).
    """
    name = getattr(cls, "name", "") or getattr(cls, "__name__", "method")
    ps, var_kw = _signature_params(cls)
    out = dict(params)
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(f"method {name!r}: parameter {key}={value!r} is not a finite number")
        p = ps.get(key)
        if p is None:
            if var_kw:
                continue  # the retriever checks its **params itself (e.g. pwf)
            valid = ", ".join(ps) or "(none)"
            raise ParameterError(f"method {name!r} has no parameter {key!r}; valid parameter names: {valid}")
        kinds = _kinds(p)
        if kinds is not None and not _ok(value, kinds):
            raise ParameterError(f"method {name!r}: parameter {key}={value!r} must be {_describe(kinds)}")
        if kinds is not None and isinstance(value, float) and "number" not in kinds:
            out[key] = int(value)  # _ok() checked that it is whole
    return out
