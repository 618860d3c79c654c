"""The ask/tell contract every optimizer keeps, and exact save/restore.

Pure numpy, no I/O, an injected np.random.Generator, and they maximise.  The
public `ask`/`tell` check their inputs and call the private `_ask`/`_tell`,
which see flat codes (n, dim): every code shape is flattened here, once.

`state_dict()` holds numbers, strings, lists of strings, arrays and nested
dicts of those, nothing that needs pickle; `to_arrays`/`from_arrays` turn it
into the flat name -> array mapping that np.savez writes and np.load (with
allow_pickle=False) reads back.  A restored optimizer, the rng's bit generator
and any pending ask included, goes on bit for bit as the saved one would have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from xdream.errors import OptimizerError
from xdream.optimizer_kinds import canonical_kind


@dataclass(frozen=True)
class Candidates:
    ids: list[str]        # stable ids: they join codes, images and responses
    codes: np.ndarray     # (n, *code_shape)


class Optimizer:
    kind = "base"

    def __init__(self, code_shape: tuple[int, ...], rng: np.random.Generator, name: str = "opt"):
        self.code_shape = tuple(int(s) for s in code_shape)
        if not self.code_shape or min(self.code_shape) < 1:
            raise OptimizerError(f"{name}: code shape {self.code_shape} has no elements")
        self.dim = int(np.prod(self.code_shape))
        self.rng = rng
        self.name = name
        self.generation = 0
        self._pending: Candidates | None = None
        self._next_index = 0

    # ------------------------------------------------------------ ask/tell
    def ask(self) -> Candidates:
        """The codes to score next; asking again before a tell returns the same ones."""
        if self._pending is None:
            codes = np.asarray(self._ask(), dtype=float)
            codes = codes.reshape(len(codes), *self.code_shape)
            ids = [f"{self.name}/g{self.generation:03d}/{self._next_index + i:05d}" for i in range(len(codes))]
            self._next_index += len(codes)
            self._pending = Candidates(ids, codes)
        return self._pending

    def tell(self, ids: list[str], scores) -> None:
        """Scores for the asked ids, in any order; NaN means 'not measured'."""
        if self._pending is None:
            raise OptimizerError(f"{self.name}: tell without a pending ask (a second tell?)")
        scores = np.asarray(scores, dtype=float)
        if scores.ndim != 1 or len(scores) != len(ids):
            raise OptimizerError(f"{self.name}: {len(ids)} ids but scores of shape {scores.shape}")
        index = {cid: i for i, cid in enumerate(self._pending.ids)}
        unknown = [cid for cid in ids if cid not in index]
        if unknown:
            raise OptimizerError(f"{self.name}: unknown candidate ids {unknown[:3]}")
        if len(set(ids)) != len(ids) or len(ids) != len(index):
            raise OptimizerError(f"{self.name}: tell must score each of the {len(index)} asked ids once")
        if np.isinf(scores).any():
            raise OptimizerError(f"{self.name}: scores must be finite or NaN")
        ordered = np.empty(len(ids))
        ordered[[index[cid] for cid in ids]] = scores
        codes = self._pending.codes.reshape(len(ordered), self.dim)
        self._tell(codes, ordered)
        self._pending = None
        self.generation += 1

    def _ask(self) -> np.ndarray:
        raise NotImplementedError

    def _tell(self, codes: np.ndarray, scores: np.ndarray) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------- save/restore
    def params(self) -> dict:
        """The hyperparameters; a state only loads into an optimizer built with the same."""
        return {}

    def _get_state(self) -> dict:
        raise NotImplementedError

    def _set_state(self, state: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        pending = self._pending
        return {
            "kind": self.kind, "name": self.name, "code_shape": np.array(self.code_shape),
            "params": self.params(), "generation": self.generation, "next_index": self._next_index,
            "rng": rng_state(self.rng),
            "pending_ids": list(pending.ids) if pending else [],
            "pending_codes": pending.codes.copy() if pending else np.zeros((0, *self.code_shape)),
            "state": copy_state(self._get_state()),
        }

    def load_state_dict(self, d: dict) -> None:
        kind = canonical_kind(str(plain(d["kind"])))   # a checkpoint of "ours" loads into "sphere-es"
        if kind != self.kind:
            raise OptimizerError(f"{self.name}: a saved {kind!r} optimizer cannot load into a {self.kind!r} one")
        shape = tuple(int(s) for s in np.atleast_1d(d["code_shape"]))
        if shape != self.code_shape:
            raise OptimizerError(f"{self.name}: saved codes have shape {shape}, this optimizer's {self.code_shape}")
        saved = {k: plain(v) for k, v in d.get("params", {}).items()}
        ours = self.params()
        differ = sorted(k for k in set(saved) | set(ours) if not _same(saved.get(k), ours.get(k)))
        if differ:
            raise OptimizerError(f"{self.name}: saved parameters differ from this optimizer's: {differ}")
        self._set_state(copy_state(d.get("state", {})))
        set_rng_state(self.rng, str(plain(d["rng"])))
        self.generation = int(plain(d["generation"]))
        self._next_index = int(plain(d["next_index"]))
        ids = [str(i) for i in np.atleast_1d(d["pending_ids"])]
        codes = np.array(d["pending_codes"], dtype=float).reshape(-1, *self.code_shape)
        if len(ids) != len(codes):
            raise OptimizerError(f"{self.name}: saved state has {len(ids)} pending ids but {len(codes)} codes")
        self._pending = Candidates(ids, codes) if ids else None


# ------------------------------------------------------------- shared helpers
def log_weights(mu: float) -> np.ndarray:
    """CMA-ES recombination weights log(mu + 1/2) - log(i), i = 1..floor(mu), summing to 1."""
    w = np.log(mu + 0.5) - np.log(np.arange(1, int(np.floor(mu)) + 1))
    return w / w.sum()


def ranked_measured(scores: np.ndarray) -> np.ndarray:
    """Indices of the measured (non-NaN) scores, best first; ties keep their order."""
    measured = np.flatnonzero(~np.isnan(scores))
    return measured[np.argsort(-scores[measured], kind="stable")]


def rng_state(rng: np.random.Generator) -> str:
    """The bit generator's state as JSON: its 128-bit integers survive np.savez as text."""
    return json.dumps(rng.bit_generator.state, default=lambda a: np.asarray(a).tolist())


def set_rng_state(rng: np.random.Generator, text: str) -> None:
    template = rng.bit_generator.state
    state = json.loads(text)
    if state.get("bit_generator") != template["bit_generator"]:
        raise OptimizerError(f"saved rng is a {state.get('bit_generator')}, this one a {template['bit_generator']}")
    rng.bit_generator.state = _like(state, template)


def _like(value, template):
    # JSON turned the state's arrays into lists: give them back their dtypes
    if isinstance(template, dict):
        return {k: _like(value[k], template[k]) for k in template}
    if isinstance(template, np.ndarray):
        return np.asarray(value, dtype=template.dtype)
    return value


def copy_state(state):
    """A deep copy of a state dict, so that saved and live state never share arrays."""
    if isinstance(state, dict):
        return {k: copy_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [copy_state(v) for v in state]
    if isinstance(state, np.ndarray):
        return state.copy()
    return state


def plain(value):
    """A 0-d array (as np.load gives back numbers and strings) as a Python scalar."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def to_arrays(state: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested state dict as flat 'a/b/c' -> array, for np.savez."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if "/" in key:
            raise OptimizerError(f"state key {key!r} must not contain '/'")
        if isinstance(value, dict):
            out.update(to_arrays(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def from_arrays(arrays) -> dict:
    """The inverse of to_arrays; takes a dict or what np.load returns."""
    state: dict = {}
    for key in arrays:
        *parents, leaf = key.split("/")
        node = state
        for p in parents:
            node = node.setdefault(p, {})
        value = np.asarray(arrays[key])
        node[leaf] = value.item() if value.ndim == 0 else value
    return state
