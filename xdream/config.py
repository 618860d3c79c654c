"""One typed config tree, loaded at the entry point and passed down.

Configs are TOML (or the JSON that a session folder holds as config.json).
Unknown keys and wrong types are errors that name the key, so a typo in a
config on a rig day fails before the animal is in the chair.  Types, choices
(Literal) and ranges (msgspec.Meta) are declared on the fields and checked by
xdream.typed; `Config.validate` adds the rules that tie fields together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from xdream import objective, typed
from xdream.errors import ConfigError
from xdream.optimizer_kinds import OPTIMIZER_KINDS, canonical_kind

NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Seed = NonNegative   # numpy's SeedSequence takes no negative seeds

# The wire carries images of at most 8192 px a side (xdream/protocol.py, ImageSide); below 16 px
# a generator's image is a few blurred pixels.
MIN_IMAGE_PX, MAX_IMAGE_PX = 16, 8192
# The server holds a block's images (uint8 RGB) and sends them in one message: past this, a typo
# in image_size_px becomes an allocation of many GiB on the rig's day.
MAX_BLOCK_BYTES = 2 << 30
# Heartbeats faster than this would keep the server's loop busy sending them.
MIN_HEARTBEAT_S = 0.05
# The smallest population each optimizer kind accepts (its constructor refuses fewer;
# tests/test_config_ranges.py checks that the two agree).
# Spike-time spans beyond +-5 s of an onset are not a PSTH any more (and would hold the recorder's buffers).
MAX_SPIKE_SPAN_MS = 5000.0
# NWB / DANDI forms, as nwbinspector 0.7 checks them (nwbinspector/checks/_nwbfile_metadata.py:
# duration_regex, species_form_regex, weight_form_regex; the experimenter form of check_experimenter_form)
_DURATION = (r"P(?!$)(\d+(?:\.\d+)?Y)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?W)?(\d+(?:\.\d+)?D)?"
             r"(T(?=\d)(\d+(?:\.\d+)?H)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?S)?)?")
AGE_FORM = re.compile(rf"{_DURATION}|({_DURATION})?/({_DURATION})?")
SPECIES_FORM = re.compile(r"([A-Z][a-z]* [a-z]+)|(http://purl.obolibrary.org/obo/NCBITaxon_\d+)")
WEIGHT_FORM = re.compile(r"(?i)\d+(\.\d+)? (kg|g|mg|ug|μg|ng|pg)")
EXPERIMENTER_FORM = re.compile(r"([\w\s\-\.']+),\s+([\w\s\-\.']+)")
MIN_POPULATION: dict[str, int] = {"ga": 2, "cmaes": 2, "sphere-cma": 3, "pycma": 4, "pycma-diag": 4,
                                  "nevergrad-cma": 4, "sphere-es": 4}


@dataclass
class SessionConfig:
    name: str = "dry-run"
    seed: Seed = 0
    generations: Annotated[int, Meta(ge=1)] = 20
    out_dir: str = "sessions"
    block_timeout_s: Positive = 60.0     # a block not complete by then: the rest is 'missing'
    wait_for_peers_s: Positive = 120.0   # how long to wait for a presenter and a recorder
    abort_policy: Literal["requeue", "nan"] = "requeue"   # an aborted presentation: requeue (show again
    max_requeues: NonNegative = 2     # later in the block) | nan; after max_requeues it is scored NaN


@dataclass
class GeneratorConfig:
    kind: str = "deepsim-fc6"  # deepsim-<layer> (norm1 ... fc8) | fourier | dcgan-face
    weights: str = ""          # a file, or a known name ('fc6') in weights_dir; empty: random weights
    weights_dir: str = ""      # default: $XDREAM_WEIGHTS, else ~/.cache/xdream/weights
    seed: Seed = 0
    device: str = "auto"       # auto | cpu | cuda
    precision: Literal["fp32", "bf16"] = "fp32"    # fp32 | bf16 (CPUs with avx512_bf16/AMX, and CUDA): about 2x faster
    fit: Literal["resize", "crop"] = "resize"        # to the stimulus size: resize (whole image) | crop (centre square)
    init_sd: Positive = 1.0       # first generation: N(0, init_sd) ...
    init_stats: str = ""       # ... or per-unit mean/std from an .npz ('mean', 'std')
    init_clip: bool = False    # clip initial codes at 0 (generators trained on post-ReLU features)
    # fourier: the highest spatial frequency, cycles per image (16: 2,391 numbers a code; 8: 591,
    # which reached twice the grating unit's fraction at 3,000 presentations: docs/benchmarks.md)
    max_cycles: Annotated[int, Meta(ge=1, le=64)] = 16


@dataclass
class OptimizerConfig:
    """One table for every kind; each kind reads its own keys (server.optimizers.CONFIG_PARAMS)."""
    KINDS: typing.ClassVar[tuple[str, ...]] = OPTIMIZER_KINDS   # xdream/optimizer_kinds.py
    kind: str = "ga"
    population: Annotated[int, Meta(ge=1)] = 20   # and the kind's own minimum: MIN_POPULATION
    # ga: XDream's defaults (willwx/XDream)
    mutation_rate: Fraction = 0.5
    mutation_size: Positive = 0.5
    selectivity: Positive = 2.0
    heritability: Fraction = 0.5
    n_elites: NonNegative = 1        # below population
    # cmaes: the Ponce lab's Cholesky CMA-ES as run online and in GECCO 2022
    init_sigma: Positive = 3.0
    a_update_freq: Annotated[int, Meta(ge=1)] = 10          # generations between updates of the Cholesky factor
    # sphere-cma and ours: the sample angle decays exponentially (GECCO 2022: 50 -> 7.33 deg in 75)
    angle_init_deg: Annotated[float, Meta(gt=0, le=90)] = 50.0
    angle_final_deg: Annotated[float, Meta(gt=0, le=90)] = 7.33
    decay_generations: NonNegative = 0       # 0: the session's generations (GECCO 2022: 75 of 75)
    # sphere-cma
    select_size: NonNegative = 0             # 0: half the population
    lr: Positive = 1.5                  # extrapolation along the great circle
    # GECCO 2022 for fc6 codes; 0: the mean norm of the first codes
    sphere_norm: Annotated[float, Meta(ge=0)] = 300.0
    # pycma, pycma-diag, nevergrad-cma
    sigma0: Annotated[float, Meta(ge=0)] = 0.0              # 0: the GECCO 2022 values (pycma 2.0, nevergrad 1.0)
    # ours
    step_ratio: Positive = 0.33         # the centre's step angle over the sample angle
    norm_rate: Annotated[float, Meta(ge=0)] = 1.0           # how fast the code norm follows the scores; 0: fixed norm
    init_norm_factor: Positive = 3.0    # the code norm starts at this times the first codes' norm ...
    min_norm_factor: Positive = 3.0     # ... and stays within min .. max times it (3, 3, 10: sized for
    max_norm_factor: Positive = 10.0    # DeePSiM fc6 codes; the default config's dcgan-face sets 20, 3, 40)

    def __post_init__(self) -> None:
        self.kind = canonical_kind(self.kind)   # an old name ("ours") loads as the kind it names


@dataclass
class ObjectiveConfig:
    """A thread's score over the recorded channels (xdream/objective.py)."""
    kind: Literal["channel", "mean", "difference", "pattern"] = "channel"   # channel: threads.channel
    channels: Annotated[list[NonNegative], Meta(max_length=4096)] = field(default_factory=list)
    target: Annotated[list[float], Meta(max_length=4096)] = field(default_factory=list)   # pattern: counts


@dataclass
class ThreadConfig:
    name: str = "a"
    # the recorder channel whose counts are this thread's score (checked against the recorder's hello)
    channel: NonNegative = 0
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)   # default: the one channel above
    seed: Seed = 0
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class ReferenceConfig:
    folder: str = ""           # PNG/JPEG files; empty: the built-in synthetic set
    count: NonNegative = 8


@dataclass
class PresentationConfig:
    on_ms: Annotated[float, Meta(gt=0)] = 100.0
    off_ms: Annotated[float, Meta(ge=0)] = 100.0
    # images are sent and drawn at this size
    image_size_px: Annotated[int, Meta(ge=MIN_IMAGE_PX, le=MAX_IMAGE_PX)] = 256
    # The presenter's screen: `xdream dry-run` starts its presenter with these; a
    # presenter started by hand takes --window-size/--frame-rate and warns if the
    # refresh rate differs from frame_rate_hz.
    window_size: Annotated[list[Annotated[int, Meta(ge=1)]], Meta(min_length=2, max_length=2)] = field(
        default_factory=lambda: [512, 512])
    frame_rate_hz: Positive = 60.0
    max_event_code: Annotated[int, Meta(ge=1, le=65535)] = 255  # 8-bit parallel ports are common; 0 is never
    #                                                             used; the wire carries 16 bits
    shuffle: bool = True


@dataclass
class ResponseConfig:
    window_ms: Annotated[list[float], Meta(min_length=2, max_length=2)] = field(default_factory=lambda: [50.0, 200.0])
    baseline_ms: Annotated[list[float], Meta(min_length=2, max_length=2)] = field(
        default_factory=lambda: [0.0, 50.0])
    subtract_baseline: bool = False
    # each presentation's spike times, per channel, in [onset+start, onset+end) ms (recording_adapters/
    # spike_times.py); [] sends counts only. Must hold the windows above to be checked against the counts.
    spike_times_ms: Annotated[list[Annotated[float, Meta(ge=-MAX_SPIKE_SPAN_MS, le=MAX_SPIKE_SPAN_MS)]],
                              Meta(max_length=2)] = field(default_factory=lambda: [-100.0, 400.0])


@dataclass
class SubjectConfig:
    """The animal, as NWB's Subject (and DANDI, nwbinspector's best-practice checks) want it."""
    subject_id: str = ""       # no "/" (DANDI builds paths from it)
    species: str = ""          # Latin binomial ("Macaca mulatta") or an NCBI taxonomy IRI
    sex: Literal["M", "F", "O", "U"] = "U"
    age: str = ""              # ISO 8601 duration (P7Y, P30D) or a range (P5Y/P7Y, P5Y/); "": unknown
    strain: str = ""
    genotype: str = ""
    weight: str = ""           # "12.5 kg" (kg, g, mg, ug, ng, pg)
    description: str = ""


@dataclass
class MetadataConfig:
    """Who, where, what: journaled at session start (session_start.metadata) and exported to NWB."""
    session_description: str = ""   # a sentence; "" : the export writes what the session did
    experimenter: list[str] = field(default_factory=list)   # "Last, First" (DANDI's form)
    institution: str = ""
    lab: str = ""
    subject: SubjectConfig = field(default_factory=SubjectConfig)


@dataclass
class NetworkConfig:
    bind: str = "tcp://127.0.0.1:0"   # port 0: the OS picks a free port
    heartbeat_s: Annotated[float, Meta(ge=MIN_HEARTBEAT_S)] = 1.0
    peer_timeout_s: Positive = 10.0   # more than two heartbeats: one lost heartbeat must not drop a peer
    # CURVE (docs/protocol.md, xdream/curve.py): required for a bind beyond loopback (or --insecure)
    curve_server_secret_key: str = ""   # the server's key pair: KEYS/server/server.key_secret
    curve_allowed_clients: str = ""     # the folder of allowed clients' public keys: KEYS/allowed
    # the status stream (docs/protocol.md, "Status stream"): its request socket (snapshot, controls;
    # "" for none) and the PUB socket's port on the same host (0: the OS picks)
    status_bind: str = "tcp://127.0.0.1:0"
    status_pub_port: Annotated[int, Meta(ge=0, le=65535)] = 0


UNIT_KINDS = ("convnet", "colour", "gabor-energy", "blob", "convnet-capped")
RfFraction = Annotated[float, Meta(gt=0.0, le=1.0)]


@dataclass
class UnitConfig:
    """One simulated neuron.  'convnet': a seeded AlexNet channel, z-scored (optimum unknown);
    the others have a known optimum (simulators/known_units.py, docs/benchmarks.md, Validity).
    Each kind reads its own keys, as the optimizer kinds do."""
    kind: Literal["convnet", "colour", "gabor-energy", "blob", "convnet-capped"] = "convnet"
    # convnet, convnet-capped
    layer: str = "conv4"
    channel: NonNegative = 0
    # [row, col]; empty: centre
    position: Annotated[list[NonNegative], Meta(max_length=2)] = field(default_factory=list)
    # colour, gabor-energy, blob: the receptive field, as fractions of the RF view's side
    centre: Annotated[list[Fraction], Meta(min_length=2, max_length=2)] = field(default_factory=lambda: [0.5, 0.5])
    size: RfFraction = 0.15            # the Gaussian envelope's sigma (blob: the centre's sigma)
    hue_deg: Annotated[float, Meta(ge=0.0, lt=360.0)] = 0.0          # colour: the preferred hue
    orientation_deg: Annotated[float, Meta(ge=0.0, lt=180.0)] = 0.0  # gabor-energy: 0 = vertical bars
    cycles: Annotated[float, Meta(gt=0.0, le=64.0)] = 8.0            # gabor-energy: cycles per RF side
    surround_ratio: Annotated[float, Meta(gt=1.0, le=10.0)] = 3.0    # blob: surround sigma / centre sigma
    polarity: Literal["on", "off"] = "on"                           # blob: bright or dark blob
    # known-optimum kinds: rate above baseline at the optimum (Hz), and the fraction of the
    # optimum's raw drive at which the rate saturates (1: only the optimum reaches peak_hz)
    peak_hz: Annotated[float, Meta(gt=0.0, le=1000.0)] = 150.0
    saturation: RfFraction = 1.0
    whitebox_steps: Annotated[int, Meta(ge=1, le=5000)] = 150       # convnet-capped: pixel-ascent steps


@dataclass
class SimulatorConfig:
    """A ConvNet unit standing in for the neuron (simulators/)."""
    seed: Seed = 0
    units: list[UnitConfig] = field(default_factory=lambda: [UnitConfig(channel=0), UnitConfig(channel=1)])
    rf_size_px: Annotated[int, Meta(ge=1)] = 256      # the square of screen, centred, that the units see
    latency_ms: Annotated[float, Meta(ge=0)] = 60.0
    duration_ms: Positive = 120.0
    baseline_hz: Annotated[float, Meta(ge=0)] = 8.0
    gain_hz: Annotated[float, Meta(ge=0)] = 60.0      # rate added per standard deviation of activation
    max_hz: Positive = 250.0
    device: str = "auto"


@dataclass
class Config:
    session: SessionConfig = field(default_factory=SessionConfig)
    threads: list[ThreadConfig] = field(default_factory=list)   # none: an error, never a silent default
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    presentation: PresentationConfig = field(default_factory=PresentationConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)

    def validate(self) -> Config:
        """The declared types and ranges (again: a config changed in code), then the rules across fields."""
        typed.check(self, root="config", error=ConfigError)
        names = [t.name for t in self.threads]
        if len(set(names)) != len(names):
            raise ConfigError(f"thread names must be unique, got {names}")
        for i, t in enumerate(self.threads):
            wrong = objective.check(t, f"config.threads[{i}]")
            if wrong:
                raise ConfigError(wrong)
            if t.optimizer.kind not in OptimizerConfig.KINDS:
                raise ConfigError(f"thread {t.name}: unknown optimizer kind {t.optimizer.kind!r}; "
                                  f"known: {', '.join(OptimizerConfig.KINDS)}")
            o, where = t.optimizer, f"config.threads[{i}].optimizer"
            least = MIN_POPULATION[o.kind]
            if o.population < least:
                raise ConfigError(f"{where}.population is {o.population}: optimizer kind {o.kind!r} "
                                  f"needs population >= {least}")
            if o.kind == "ga" and o.n_elites >= o.population:
                raise ConfigError(f"{where}.n_elites is {o.n_elites}: allowed 0..{o.population - 1} "
                                  f"(below population = {o.population})")
            if o.kind == "sphere-cma" and o.select_size >= o.population:
                raise ConfigError(f"{where}.select_size is {o.select_size}: allowed 0..{o.population - 1} "
                                  f"(0: half the population)")
        net = self.network
        if net.peer_timeout_s <= 2 * net.heartbeat_s:
            raise ConfigError(f"config.network.peer_timeout_s is {net.peer_timeout_s}: allowed > 2 x "
                              f"network.heartbeat_s = {2 * net.heartbeat_s}")
        if bool(net.curve_server_secret_key) != bool(net.curve_allowed_clients):
            raise ConfigError("config.network.curve_server_secret_key and network.curve_allowed_clients go "
                              "together: give both (CURVE) or neither")
        p = self.presentation
        if min(p.window_size) < p.image_size_px:
            raise ConfigError(f"presentation.window_size must be [width, height], each >= image_size_px "
                              f"= {p.image_size_px}, got {p.window_size}")
        for name in ("window_ms", "baseline_ms"):
            lo_hi = getattr(self.response, name)
            if not lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"response.{name} must be [start, end] with start < end, got {lo_hi}")
        span = self.response.spike_times_ms
        if span and not (len(span) == 2 and span[0] < span[1]):
            raise ConfigError(f"response.spike_times_ms must be [] (off) or [start, end] with start < end, "
                              f"got {span}")
        self._check_metadata()
        block = sum(t.optimizer.population for t in self.threads) + self.reference.count
        image_bytes = 3 * p.image_size_px ** 2
        if block * image_bytes > MAX_BLOCK_BYTES:
            largest = math.isqrt(MAX_BLOCK_BYTES // (3 * block))
            raise ConfigError(f"config.presentation.image_size_px is {p.image_size_px}: a block of {block} "
                              f"images of {p.image_size_px}x{p.image_size_px} px is "
                              f"{block * image_bytes / 2**30:.1f} GiB, over the {MAX_BLOCK_BYTES >> 30} GiB a "
                              f"block may take; allowed: image_size_px <= {largest} for this block")
        if block > p.max_event_code:
            raise ConfigError(f"a block of {block} presentations needs more event codes than "
                              f"presentation.max_event_code = {p.max_event_code}")
        sim = self.simulator
        for i, u in enumerate(sim.units):
            if u.kind != "convnet" and sim.baseline_hz + u.peak_hz > sim.max_hz:
                raise ConfigError(f"config.simulator.units[{i}].peak_hz is {u.peak_hz}: baseline_hz + peak_hz "
                                  f"must be <= simulator.max_hz = {sim.max_hz}")
        if not self.threads:
            raise ConfigError("config has no [[threads]]: a session needs at least one thread "
                              "(a [[threads]] table with name, channel, generator and optimizer)")
        return self

    def _check_metadata(self) -> None:
        """The forms NWB and DANDI want, checked before the session rather than at export."""
        m, s = self.metadata, self.metadata.subject
        checks = [("subject.species", s.species, SPECIES_FORM, "a Latin binomial ('Macaca mulatta') or "
                   "an NCBI taxonomy IRI (http://purl.obolibrary.org/obo/NCBITaxon_9544)"),
                  ("subject.age", s.age, AGE_FORM, "an ISO 8601 duration (P7Y, P30D) or a range (P5Y/P7Y, P5Y/)"),
                  ("subject.weight", s.weight, WEIGHT_FORM, "a number and a unit ('12.5 kg')")]
        checks += [(f"experimenter[{i}]", e, EXPERIMENTER_FORM, "'Last, First'") for i, e in enumerate(m.experimenter)]
        for name, value, form, want in checks:
            if value and not form.fullmatch(value):
                raise ConfigError(f"config.metadata.{name} is {value!r}: allowed {want}")
        if "/" in s.subject_id:
            raise ConfigError(f"config.metadata.subject.subject_id is {s.subject_id!r}: no '/' allowed "
                              f"(DANDI makes paths of it)")


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
    return typed.convert(data, Config, root="config", error=ConfigError).validate()


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def save_json(config: Config, path: Path) -> None:
    path.write_text(json.dumps(to_dict(config), indent=2) + "\n")
