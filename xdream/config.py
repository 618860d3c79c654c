"""One typed config tree, loaded at the entry point and passed down.

Configs are TOML (or the JSON that a session folder holds as config.json).
Unknown keys and wrong types are errors that name the key, so a typo in a
config on a rig day fails before the animal is in the chair.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from xdream.errors import ConfigError
from xdream.optimizer_kinds import OPTIMIZER_KINDS, canonical_kind


@dataclass
class SessionConfig:
    name: str = "dry-run"
    seed: int = 0
    generations: int = 20
    out_dir: str = "sessions"
    block_timeout_s: float = 60.0     # a block not complete by then: the rest is 'missing'
    wait_for_peers_s: float = 120.0   # how long to wait for a presenter and a recorder
    abort_policy: str = "requeue"     # an aborted presentation: requeue (show again later in the block) | nan
    max_requeues: int = 2             # then it is scored NaN


@dataclass
class GeneratorConfig:
    kind: str = "deepsim-fc6"  # deepsim-<layer> (norm1 ... fc8) | fourier | dcgan-face
    weights: str = ""          # a file, or a known name ('fc6') in weights_dir; empty: random weights
    weights_dir: str = ""      # default: $XDREAM_WEIGHTS, else ~/.cache/xdream/weights
    seed: int = 0
    device: str = "auto"       # auto | cpu | cuda
    precision: str = "fp32"    # fp32 | bf16 (CPUs with avx512_bf16/AMX, and CUDA): about 2x faster
    fit: str = "resize"        # to the stimulus size: resize (whole image) | crop (centre square)
    init_sd: float = 1.0       # first generation: N(0, init_sd) ...
    init_stats: str = ""       # ... or per-unit mean/std from an .npz ('mean', 'std')
    init_clip: bool = False    # clip initial codes at 0 (generators trained on post-ReLU features)


@dataclass
class OptimizerConfig:
    """One table for every kind; each kind reads its own keys (server.optimizers.CONFIG_PARAMS)."""
    KINDS: typing.ClassVar[tuple[str, ...]] = OPTIMIZER_KINDS   # xdream/optimizer_kinds.py
    kind: str = "ga"
    population: int = 20
    # ga: XDream's defaults (willwx/XDream)
    mutation_rate: float = 0.5
    mutation_size: float = 0.5
    selectivity: float = 2.0
    heritability: float = 0.5
    n_elites: int = 1
    # cmaes: the Ponce lab's Cholesky CMA-ES as run online and in GECCO 2022
    init_sigma: float = 3.0
    a_update_freq: int = 10          # generations between updates of the Cholesky factor
    # sphere-cma and ours: the sample angle decays exponentially (GECCO 2022: 50 -> 7.33 deg in 75)
    angle_init_deg: float = 50.0
    angle_final_deg: float = 7.33
    decay_generations: int = 0       # 0: the session's generations (GECCO 2022: 75 of 75)
    # sphere-cma
    select_size: int = 0             # 0: half the population
    lr: float = 1.5                  # extrapolation along the great circle
    sphere_norm: float = 300.0       # GECCO 2022 for fc6 codes; 0: the mean norm of the first codes
    # pycma, pycma-diag, nevergrad-cma
    sigma0: float = 0.0              # 0: the GECCO 2022 values (pycma 2.0, nevergrad 1.0)
    # ours
    step_ratio: float = 0.33         # the centre's step angle over the sample angle
    norm_rate: float = 1.0           # how fast the code norm follows the scores; 0: fixed norm
    init_norm_factor: float = 3.0    # the code norm starts at this times the first codes' norm ...
    min_norm_factor: float = 3.0     # ... and stays within min .. max times it (3, 3, 10: for DeePSiM
    max_norm_factor: float = 10.0    # fc6 codes drawn N(0, 1); 1, 0.5, 10 for a Gaussian-prior GAN)

    def __post_init__(self) -> None:
        self.kind = canonical_kind(self.kind)   # an old name ("ours") loads as the kind it names


@dataclass
class ThreadConfig:
    name: str = "a"
    channel: int = 0           # recorder channel whose counts are this thread's score
    seed: int = 0
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class ReferenceConfig:
    folder: str = ""           # PNG/JPEG files; empty: the built-in synthetic set
    count: int = 8


@dataclass
class PresentationConfig:
    on_ms: float = 100.0
    off_ms: float = 100.0
    image_size_px: int = 256   # images are sent and drawn at this size
    # The presenter's screen: `xdream dry-run` starts its presenter with these; a
    # presenter started by hand takes --window-size/--frame-rate and warns if the
    # refresh rate differs from frame_rate_hz.
    window_size: list[int] = field(default_factory=lambda: [512, 512])
    frame_rate_hz: float = 60.0
    max_event_code: int = 255    # 8-bit parallel ports are common; 0 is never used
    shuffle: bool = True


@dataclass
class ResponseConfig:
    window_ms: list[float] = field(default_factory=lambda: [50.0, 200.0])
    baseline_ms: list[float] = field(default_factory=lambda: [0.0, 50.0])
    subtract_baseline: bool = False


@dataclass
class NetworkConfig:
    bind: str = "tcp://127.0.0.1:0"   # port 0: the OS picks a free port
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 10.0


@dataclass
class UnitConfig:
    layer: str = "conv4"
    channel: int = 0
    position: list[int] = field(default_factory=list)  # [row, col]; empty: centre


@dataclass
class SimulatorConfig:
    """A ConvNet unit standing in for the neuron (simulators/)."""
    seed: int = 0
    units: list[UnitConfig] = field(default_factory=lambda: [UnitConfig(channel=0), UnitConfig(channel=1)])
    rf_size_px: int = 256      # the square of screen, centred, that the units see
    latency_ms: float = 60.0
    duration_ms: float = 120.0
    baseline_hz: float = 8.0
    gain_hz: float = 60.0      # rate added per standard deviation of activation
    max_hz: float = 250.0
    device: str = "auto"


@dataclass
class Config:
    session: SessionConfig = field(default_factory=SessionConfig)
    threads: list[ThreadConfig] = field(default_factory=lambda: [ThreadConfig()])
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    presentation: PresentationConfig = field(default_factory=PresentationConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)

    def validate(self) -> "Config":
        if self.session.generations < 1:
            raise ConfigError("session.generations must be >= 1")
        if self.session.abort_policy not in ("requeue", "nan"):
            raise ConfigError(f"session.abort_policy must be 'requeue' or 'nan', got {self.session.abort_policy!r}")
        if self.session.max_requeues < 0:
            raise ConfigError("session.max_requeues must be >= 0")
        if not self.threads:
            raise ConfigError("the config names no [[threads]]")
        names = [t.name for t in self.threads]
        if len(set(names)) != len(names):
            raise ConfigError(f"thread names must be unique, got {names}")
        for t in self.threads:
            if t.optimizer.kind not in OptimizerConfig.KINDS:
                raise ConfigError(f"thread {t.name}: unknown optimizer kind {t.optimizer.kind!r}; "
                                  f"known: {', '.join(OptimizerConfig.KINDS)}")
            if t.channel < 0:
                raise ConfigError(f"thread {t.name}: channel must be >= 0")
        p = self.presentation
        if p.on_ms <= 0 or p.off_ms < 0:
            raise ConfigError("presentation.on_ms must be > 0 and off_ms >= 0")
        if len(p.window_size) != 2 or min(p.window_size) < p.image_size_px:
            raise ConfigError("presentation.window_size must be [width, height], each >= image_size_px")
        for name in ("window_ms", "baseline_ms"):
            lo_hi = getattr(self.response, name)
            if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"response.{name} must be [start, end] with start < end")
        block = sum(t.optimizer.population for t in self.threads) + self.reference.count
        if block > p.max_event_code:
            raise ConfigError(f"a block of {block} presentations needs more event codes than "
                              f"presentation.max_event_code = {p.max_event_code}")
        return self


def load(path: str | Path | None = None) -> Config:
    """Load a TOML or JSON config; None loads the default config shipped in the package."""
    if path is None:
        text = resources.files("xdream").joinpath("default_config.toml").read_text()
        return from_dict(tomllib.loads(text))
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid {path.suffix[1:] or 'TOML'}: {exc}") from None
    return from_dict(data)


def from_dict(data: dict) -> Config:
    return _build(Config, data, "config").validate()


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def save_json(config: Config, path: Path) -> None:
    path.write_text(json.dumps(to_dict(config), indent=2) + "\n")


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known: {sorted(known)}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def _convert(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        (inner,) = typing.get_args(hint)
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value
