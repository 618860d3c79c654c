"""Geometry on the sphere, for the optimizers that search directions (sphere_cma.py, sphere_es.py);
after Animadversio/ActMax-Optimizer-Dev core/geometry_utils.py (ExpMap, SLERP, renormalize)."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def exp_map(x: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    """Move along the sphere through x (radius |x|) by tangent vectors; |t| is the angle."""
    angle = np.linalg.norm(tangents, axis=1, keepdims=True)
    direction = tangents / np.maximum(angle, 1e-300)
    return (np.cos(angle) * unit(x) + np.sin(angle) * direction) * np.linalg.norm(x)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The point at fraction t of the great circle from a to b (t > 1 extrapolates)."""
    ua, ub = unit(a), unit(b)
    angle = np.arccos(np.clip(ua @ ub, -1.0, 1.0))
    if angle < 1e-12:
        return b.copy()
    return (np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)


def tangent(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rows of v without their component along x."""
    ux = unit(x)
    return v - np.outer(v @ ux, ux)
