"""Comparison helpers for the reference-conformance checks (``python -m vdvae_jax.reference``).

A check compares every recorded array of one model and mode with ours and reports the largest
absolute error and the largest error relative to the array's scale:

.. math::
    e_{abs} = \\max |a - b|, \\qquad e_{rel} = \\frac{\\max |a - b|}{\\max(\\max |b|, 10^{-12})},

passing when :math:`|a - b| \\le atol + rtol \\cdot \\max|b|` holds for every array.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["CheckResult", "ArrayError", "compare_arrays", "summarise"]


class ArrayError(NamedTuple):
    key: str
    max_abs: float
    max_rel: float
    passed: bool


class CheckResult(NamedTuple):
    """Outcome of one model x mode check: worst errors over its arrays and PASS/FAIL."""

    model: str
    mode: str
    n_arrays: int
    max_abs: float
    max_rel: float
    worst_key: str
    passed: bool
    failures: tuple[str, ...] = ()
    note: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        note = f"  [{self.note}]" if self.note else ""
        return (f"{status}  {self.model:<16} {self.mode:<12} arrays={self.n_arrays:<4d} "
                f"max_abs={self.max_abs:.3e} max_rel={self.max_rel:.3e} (worst: {self.worst_key}){note}")


def compare_arrays(key: str, ours, ref, *, rtol: float, atol: float = 0.0) -> ArrayError:
    """Compare one array (scale-relative tolerance, see module docstring)."""
    a = np.asarray(ours, dtype=np.complex128 if np.iscomplexobj(ref) else np.float64)
    b = np.asarray(ref, dtype=a.dtype)
    if a.shape != b.shape:
        return ArrayError(key, float("inf"), float("inf"), False)
    if a.size == 0:
        return ArrayError(key, 0.0, 0.0, True)
    diff = float(np.max(np.abs(a - b)))
    scale = max(float(np.max(np.abs(b))), 1e-12)
    finite = bool(np.all(np.isfinite(a)))
    return ArrayError(key, diff, diff / scale, finite and diff <= atol + rtol * scale)


def summarise(model: str, mode: str, errors: list[ArrayError], note: str = "") -> CheckResult:
    """Fold the per-array errors of one model x mode into a :class:`CheckResult` (``note`` is printed
    on its line, e.g. to flag a looser documented bound)."""
    if not errors:
        return CheckResult(model, mode, 0, 0.0, 0.0, "-", False, ("no arrays compared",))
    worst = max(errors, key=lambda e: e.max_rel)
    failures = tuple(f"{e.key}: abs {e.max_abs:.3e} rel {e.max_rel:.3e}" for e in errors if not e.passed)
    return CheckResult(model, mode, len(errors), max(e.max_abs for e in errors), worst.max_rel,
                       worst.key, not failures, failures, note)
