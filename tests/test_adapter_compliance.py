"""One suite for every rig adapter: the contract of recording_adapters/base.py.

After python-neo's BaseTestRawIO and SpikeInterface's common extractor tests:
each adapter with a simulated peer (simulators/wire_peers.py: openephys, intan,
lsl) is built by name through recording_adapters.sources.build_source, with
the peer's `--rig-option` strings, as `xdream record --rig NAME` builds it, and
held to what the contract promises: it is a RigSource; codes and spikes sent
through the peer's real wire format come back (exact codes, spike counts per
channel, times within one sample); the watermark rises and never passes data
still to come; poll waits about its timeout when nothing comes; bad bytes are
skipped, never raised; close() is idempotent and lets go of every connection.
Every registered adapter, Plexon and Blackrock included (their client APIs
are faked in tests/test_plexon_blackrock.py), has typed, defaulted options
that the docs list, and a typo is a ConfigError naming the option.  A plugin
joins through the entry point group `xdream.rig_adapters`.

A new adapter with a simulated peer joins by a line in WIRE below.  A peer that
reads a TCP byte stream (its TCP_PORTS: Intan RHX) is driven twice, straight and
through simulators/resegmenting_proxy.py (seeded): the same codes and spike
counts must come back either way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest

from recording_adapters import sources
from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents
from recording_adapters.options import Range, SourceOptions
from recording_adapters.sources import (
    ADAPTERS,
    ENTRY_POINT_GROUP,
    adapter_class,
    build_source,
    check_source,
    load_class,
)
from simulators.resegmenting_proxy import ResegmentingProxy, resegment
from simulators.wire_peers import PEERS, start_peer
from tests.test_plexon_blackrock import blackrock, plexon
from xdream.errors import ConfigError, SessionError

REPO = Path(__file__).resolve().parents[1]
CHANNELS = 4


@dataclass
class Case:
    """How to drive one adapter through its simulated peer."""
    options: dict[str, str] = field(default_factory=dict)   # besides the peer's adapter_options()
    sample_s: float = 1 / 30000                              # times match to this: one sample
    ready: Callable = lambda peer: True                      # the peer will pass on what it is sent
    clock: Callable = lambda peer, t: t                      # a sent rig time in the adapter's clock
    garbage: Callable = lambda peer: None                    # bytes that break the wire format


def _wait(condition, limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


WIRE = {
    "openephys": Case(garbage=lambda peer: [peer.send_raw(f) for f in
                                            ([b"DATA\0", b"{not json"], [b"junk"], [b"EVENT\0", b"[]", b"x"])]),
    # RHX passes nothing on before it has taken both data clients and runs
    "intan": Case(options={"stall_s": "60"},
                  ready=lambda peer: _wait(lambda: peer.running and peer.waveform.client and peer.spike.client),
                  garbage=lambda peer: peer.send_raw("spike", b"\x01" * 30)),
    # LSL has no samples: the peer maps rig time onto its local_clock() (one batch, one offset) and
    # the inlet moves the stamps by liblsl's clock-offset estimate, tens of microseconds off on one
    # machine (27 us seen): 5 ms is far from that, and far below any response window
    "lsl": Case(options={"latency_s": "0.2", "hold_s": "0.3", "reconnect_s": "0.1", "resolve_timeout_s": "5"},
                sample_s=0.005, clock=lambda peer, t: peer.lsl_time(t),
                garbage=lambda peer: [peer.push_marker(m, peer.lsl_time(0.0)) for m in (0, -3)]),
}


def test_every_simulated_peer_has_a_compliance_case():
    assert set(WIRE) == set(PEERS)


# --- the sockets this process holds (Linux: /proc), to see that close() lets go ------------------
def established_sockets() -> set[int]:
    """Inodes of this process's TCP connections in state ESTABLISHED."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            mine.add(int(link[8:-1]))
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "01" and int(cols[9]) in mine:     # 01: TCP_ESTABLISHED
                out.add(int(cols[9]))
    return out


@dataclass
class Pair:
    name: str
    case: Case
    peer: object
    source: RigSource
    before: set[int]          # connections held before the adapter was built
    proxies: list[ResegmentingProxy] = field(default_factory=list)

    def close(self) -> None:
        self.source.close()
        for proxy in self.proxies:
            proxy.close()
        self.peer.close()


def open_pair(name: str, resegment_seed: int | None = None) -> Pair:
    """The peer and its adapter, straight or (with a seed) through a re-segmenting proxy per TCP port."""
    case = WIRE[name]
    peer = start_peer(name, CHANNELS)
    proxies: list[ResegmentingProxy] = []
    try:
        options = peer.adapter_options()
        if resegment_seed is not None:
            options, proxies = resegment(peer, options, resegment_seed)
        before = established_sockets()
        source = build_source(name, {**options, **case.options})
    except BaseException:
        for proxy in proxies:
            proxy.close()
        peer.close()
        raise
    pair = Pair(name, case, peer, source, before, proxies)
    if not case.ready(peer):
        pair.close()
        raise AssertionError(f"the simulated {name} peer never got ready")
    return pair


# every peer straight; those that speak a TCP byte stream also through the re-segmenting proxy
ROUTES = [(name, None) for name in sorted(WIRE)] + \
    [(name, 20260 + i) for i, name in enumerate(sorted(WIRE)) if getattr(load_class(PEERS, name, "peer"),
                                                                         "TCP_PORTS", None)]


@pytest.fixture(params=ROUTES, ids=[name if seed is None else f"{name}-resegmented" for name, seed in ROUTES])
def pair(request):
    p = open_pair(*request.param)
    yield p
    p.close()


def test_the_byte_stream_peers_are_also_driven_through_the_proxy():
    assert ("intan", None) in ROUTES and any(name == "intan" and seed is not None for name, seed in ROUTES)


# --- what goes through the wire ---------------------------------------------------------------
CODES = [(0.1, 5), (0.4, 200), (0.7, 255), (1.0, 17)]
END = 2.0              # the rig's clock runs to here
WHOLE = 1.5            # collect until the watermark passes this: every code released (hold 0.3 s)


def spikes_sent() -> tuple[np.ndarray, np.ndarray]:
    """30 spikes on 3 of the 4 channels (channel 2 stays silent), between samples."""
    rng = np.random.default_rng(7)
    times = np.sort(rng.uniform(0.05, 1.2, 30))
    chans = rng.choice([0, 1, 3], size=30)
    return times, chans


@dataclass
class Poll:
    codes: list
    spike_times: np.ndarray
    spike_channels: np.ndarray
    watermark: float | None


def feed_and_collect(p: Pair, limit_s: float = 20.0) -> list[Poll]:
    times, chans = spikes_sent()
    p.peer.send(RigEvents(list(CODES), times, chans, END))
    polls: list[Poll] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ev = p.source.poll(0.05).in_seconds()
        polls.append(Poll(list(ev.codes), np.asarray(ev.spike_times, float),
                          np.asarray(ev.spike_channels, int), ev.watermark))
        if ev.watermark is not None and ev.watermark >= p.case.clock(p.peer, WHOLE):
            break
    return polls


def test_the_adapter_is_a_rig_source_with_the_peers_channels(pair):
    assert isinstance(pair.source, RigSource)
    assert type(pair.source) is adapter_class(pair.name)
    assert pair.source.channels == CHANNELS
    assert isinstance(pair.source.options, adapter_class(pair.name).Options)


def test_codes_and_spikes_sent_through_the_peer_come_back(pair):
    polls = feed_and_collect(pair)
    to_rig = np.vectorize(lambda t: pair.case.clock(pair.peer, t))
    codes = [c for p in polls for c in p.codes]
    assert [c for _, c in codes] == [c for _, c in CODES]
    assert np.allclose([t for t, _ in codes], to_rig([t for t, _ in CODES]), rtol=0, atol=pair.case.sample_s)
    times, chans = spikes_sent()
    got_t = np.concatenate([p.spike_times for p in polls])
    got_c = np.concatenate([p.spike_channels for p in polls])
    assert np.bincount(got_c, minlength=CHANNELS).tolist() == np.bincount(chans, minlength=CHANNELS).tolist()
    for ch in range(CHANNELS):
        assert np.allclose(np.sort(got_t[got_c == ch]), to_rig(times[chans == ch]) if (chans == ch).any() else [],
                           rtol=0, atol=pair.case.sample_s), f"channel {ch}"


def test_the_watermark_rises_and_never_passes_undelivered_data(pair):
    polls = feed_and_collect(pair)
    marks = [p.watermark for p in polls if p.watermark is not None]
    assert marks and marks[-1] >= pair.case.clock(pair.peer, WHOLE), "the watermark never reached the end"
    assert marks == sorted(marks), "the watermark went back with no clock jump"
    sent_codes = np.array([pair.case.clock(pair.peer, t) for t, _ in CODES])
    times, _ = spikes_sent()
    sent_spikes = np.array([pair.case.clock(pair.peer, t) for t in times])
    tol = pair.case.sample_s
    n_codes = n_spikes = 0
    last_mark = -np.inf
    for p in polls:
        # nothing delivered lies before a watermark already handed on
        assert all(t >= last_mark - tol for t, _ in p.codes), "a code came after the watermark passed it"
        assert (p.spike_times >= last_mark - tol).all(), "a spike came after the watermark passed it"
        n_codes += len(p.codes)
        n_spikes += len(p.spike_times)
        if p.watermark is not None:
            # everything sent before the watermark has been delivered, by this poll
            assert n_codes >= (sent_codes < p.watermark - tol).sum(), f"watermark {p.watermark} passed a code"
            assert n_spikes >= (sent_spikes < p.watermark - tol).sum(), f"watermark {p.watermark} passed spikes"
            last_mark = p.watermark


def test_poll_waits_about_its_timeout_when_nothing_comes(pair):
    """Margin: 0.5 s over the timeout, for 2 shared cores under the other engineers' load."""
    for timeout in (0.0, 0.3):
        worst = 0.0
        for _ in range(3):
            start = time.monotonic()
            ev = pair.source.poll(timeout)
            worst = max(worst, time.monotonic() - start)
            assert ev.codes == [] and len(ev.spike_times) == 0
        assert worst < timeout + 0.5, f"poll({timeout}) took {worst:.3f} s"


def test_bad_bytes_on_the_wire_are_skipped_never_raised(pair):
    pair.case.garbage(pair.peer)
    for _ in range(10):
        ev = pair.source.poll(0.02)        # raises nothing
        assert isinstance(ev, RigEvents)


def test_close_is_idempotent_and_lets_go_of_every_connection(pair):
    feed_and_collect(pair, limit_s=5.0)
    assert established_sockets() - pair.before, "the adapter holds no TCP connection to its peer?"
    pair.source.close()
    pair.source.close()                              # a second close does nothing
    assert pair.source.closed
    with pytest.raises(SessionError, match="after close"):
        pair.source.poll(0.0)
    assert _wait(lambda: established_sockets() <= pair.before, 5.0), \
        f"connections still open after close(): {established_sockets() - pair.before}"
    pair.peer.close()
    # a new peer and adapter start as the first did (through a proxy again, if the first was)
    again = open_pair(pair.name, pair.proxies[0].seed + 1 if pair.proxies else None)
    try:
        with again.source as source:                 # the context manager closes it
            assert isinstance(source.poll(0.0), RigEvents)
        assert again.source.closed
    finally:
        again.close()


# --- options: every registered adapter, no peer needed ----------------------------------------
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap(tp) -> tuple[object, tuple]:
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tuple(tp.__metadata__)
    return tp, ()


def _members(tp) -> list:
    """A union's members (Annotated kept), else [tp]."""
    base, _ = _unwrap(tp)
    return list(typing.get_args(base)) if typing.get_origin(base) in (typing.Union, types.UnionType) else [tp]


def _free_text(tp) -> bool:
    """Whether any text is a valid value (a str with no pattern, or a tuple of those)."""
    for m in _members(tp):
        base, checks = _unwrap(m)
        if base is str and not checks:
            return True
        if typing.get_origin(base) is tuple and _free_text(typing.get_args(base)[0]):
            return True
    return False


def _below_range(tp) -> str | None:
    """A value just below a declared Range of a number, as the command line would give it."""
    for m in _members(tp):
        base, checks = _unwrap(m)
        for c in checks:
            if isinstance(c, Range) and c.low is not None and base in (int, float):
                low = c.low if c.low_open else c.low - (1 if base is int else 0.5)
                return str(int(low) if base is int else low)
    return None


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_options_are_a_typed_frozen_dataclass_with_a_default_for_each(name):
    cls = adapter_class(name)
    assert issubclass(cls, RigSource) and cls.name == name
    assert dataclasses.is_dataclass(cls.Options) and issubclass(cls.Options, SourceOptions)
    assert cls.Options.__dataclass_params__.frozen
    fields = dataclasses.fields(cls.Options)
    assert fields, "an adapter with no options at all?"
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in fields), "`--rig NAME` alone must build the options"
    defaults = check_source(name, {})
    assert defaults == cls.Options()
    # the command line's strings for the defaults convert back to the defaults
    assert check_source(name, defaults.as_strings()) == defaults


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_docs_list_every_option_of_the_adapter(name):
    """docs/adapters.md has a table of options per adapter: it names exactly the declared ones."""
    text = (REPO / "docs" / "adapters.md").read_text()
    section = next(s for s in text.split("\n## ") if f"`--rig {name}`" in s)
    documented = set()
    for row in re.findall(r"^\| ((?:`\w+`(?:, | / )?)+) \|", section, re.MULTILINE):
        documented |= set(re.findall(r"`(\w+)`", row))
    assert documented == set(adapter_class(name).Options.option_names())


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_a_mistyped_option_is_a_config_error_naming_adapter_option_and_value(name):
    """Checked before the rig (or its client library: Plexon's, Blackrock's) is touched."""
    hints = _hints(adapter_class(name).Options)
    typed = [f for f, tp in hints.items() if not _free_text(tp)]
    assert typed, "no typed option to mistype?"
    for option in typed:
        with pytest.raises(ConfigError) as err:
            build_source(name, {option: "1.5x"})
        message = str(err.value)
        assert f"rig adapter {name!r}" in message and f"option {option} must be" in message \
            and "'1.5x'" in message, message
    ranged = {f: v for f, tp in hints.items() if (v := _below_range(tp)) is not None}
    for option, value in ranged.items():
        with pytest.raises(ConfigError, match=rf"rig adapter '{name}': option {option} must be .*[>.].*; "
                                              rf"got '{re.escape(value)}'"):
            build_source(name, {option: value})


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_an_unknown_option_lists_the_known_ones(name):
    known = adapter_class(name).Options.option_names()
    with pytest.raises(ConfigError, match=rf"rig adapter '{name}' takes no option 'no_such_option'; "
                                          rf"its options: {', '.join(known)}$"):
        build_source(name, {"no_such_option": "1"})


def test_typed_fields_take_typed_values_and_refuse_text():
    cls = adapter_class("intan")
    opts = cls.Options(channels=("A-000", "b-003"), code_lines=range(1, 9), hold_s=1)
    assert opts.code_lines == tuple(range(1, 9)) and opts.hold_s == 1.0 and isinstance(opts.hold_s, float)
    assert opts == check_source("intan", {"channels": "A-000,b-003", "code_lines": "1-8", "hold_s": "1"})
    with pytest.raises(ConfigError, match="option command_port must be an integer in 1..65535.*from_strings"):
        cls.Options(command_port="5000")


# --- the adapters without a wire peer join through their client fakes --------------------------
def test_plexon_is_a_rig_source_whose_close_is_idempotent(monkeypatch):
    source, mod = plexon(monkeypatch, [])
    client = mod.client
    calls = []
    monkeypatch.setattr(client, "disconnect", lambda: calls.append(1))
    assert isinstance(source, RigSource) and source.channels == 8
    source.close()
    source.close()
    assert calls == [1] and source.closed
    with pytest.raises(SessionError, match="after close"):
        source.poll(0.0)


def test_blackrock_is_a_rig_source_whose_close_is_idempotent(monkeypatch):
    calls = []
    source, cbsdk = blackrock(monkeypatch)
    monkeypatch.setattr(cbsdk, "disconnect", lambda device: calls.append(device))
    assert isinstance(source, RigSource) and source.channels == 6
    with source:
        pass
    source.close()
    assert calls == [cbsdk.device] and source.closed


def test_a_failed_start_closes_what_was_opened(monkeypatch):
    """Plexon connects, then finds no such event source: the client is disconnected again."""
    calls = []
    from tests.test_plexon_blackrock import fake_pyopxclient
    mod = fake_pyopxclient([], [])
    real = mod.PyOPXClientAPI.disconnect
    monkeypatch.setattr(mod.PyOPXClientAPI, "disconnect", lambda self: calls.append(1) or real(self))
    monkeypatch.setitem(sys.modules, "pyopxclient", mod)
    with pytest.raises(ConfigError, match="no event source 'DIGITAL'"):
        build_source("plexon", {"event_source": "DIGITAL"})
    assert calls == [1] and not mod.client.connected


# --- plugins: the entry point group xdream.rig_adapters ---------------------------------------
PLUGIN_MODULE = "xdream_toy_rig_plugin"
PLUGIN_SOURCE = '''
"""A third-party rig adapter, as another package would ship it."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents
from recording_adapters import sources
from recording_adapters.options import Range, SourceOptions


@dataclass(frozen=True)
class ToyOptions(SourceOptions):
    channels: Annotated[int, Range(1)] = 2
    gain: float = 1.0
    code: Annotated[int, Range(1, 255)] = 7


class ToyRigSource(RigSource):
    name = "toyrig"
    Options = ToyOptions

    def _open(self, o):
        self.channels = o.channels
        self.closes = 0

    def _poll(self, timeout_s):
        return RigEvents(codes=[(0.5, self.options.code)], spike_times=np.array([0.6]),
                         spike_channels=np.array([self.channels - 1]), watermark=1.0)

    def _close(self):
        self.closes += 1


class NotASource:
    channels = 1
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_warned", set())       # each test hears the registry's warnings
    """A package installed at test time: its module and a dist-info folder with entry_points.txt,
    on sys.path, so that importlib.metadata finds it as it finds a pip-installed one."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    info = tmp_path / "xdream_toy_rig-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xdream-toy-rig\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        f"toyrig = {PLUGIN_MODULE}:ToyRigSource\n"
        f"openephys = {PLUGIN_MODULE}:ToyRigSource\n"        # a built-in's name: the built-in wins
        f"notasource = {PLUGIN_MODULE}:NotASource\n")
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_adapter_is_built_by_name_through_the_cli_path(plugin):
    source = build_source("toyrig", {"channels": "3", "gain": "2.5", "code": "9"})
    try:
        assert type(source).__module__ == PLUGIN_MODULE and isinstance(source, RigSource)
        assert source.channels == 3 and source.options.gain == 2.5
        ev = source.poll(0.0)
        assert ev.codes == [(0.5, 9)] and ev.spike_channels.tolist() == [2]
    finally:
        source.close()
        source.close()
    assert source.closes == 1
    with pytest.raises(ConfigError, match=r"rig adapter 'toyrig': option code must be an integer in 1..255; "
                                          r"got '300'"):
        build_source("toyrig", {"code": "300"})
    with pytest.raises(ConfigError, match=r"rig adapter 'toyrig' takes no option 'gian'; its options: "
                                          r"channels, gain, code"):
        build_source("toyrig", {"gian": "2"})
    with pytest.raises(ConfigError, match="unknown rig adapter 'toyrg'; known: .*openephys.*toyrig"):
        build_source("toyrg", {})


def test_a_built_in_name_wins_over_a_plugin_with_a_warning(plugin, caplog):
    with caplog.at_level(logging.WARNING, logger="recording_adapters.sources"):
        cls = adapter_class("openephys")
    assert cls.__module__ == "recording_adapters.openephys"
    assert f"rig adapter plugin 'openephys' ({PLUGIN_MODULE}:ToyRigSource" in caplog.text
    assert "built-in adapter of that name is used" in caplog.text


def test_a_plugin_that_is_not_a_rig_source_is_refused(plugin):
    with pytest.raises(ConfigError, match="'notasource' .* is not a recording_adapters.base.RigSource"):
        build_source("notasource", {})
