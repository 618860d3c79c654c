"""The Plexon and Blackrock adapters at their boundary: fakes of Plexon's
`pyopxclient` and Blackrock's `pycbsdk`, shaped as their upstream code
documents (see the adapters' docstrings), injected into sys.modules."""

from __future__ import annotations

import enum
import logging
import sys
import threading
import types
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest

from recording_adapters.sources import build_source
from xdream.errors import ConfigError, SessionError


def drain(source, polls=5, timeout_s=0.0):
    """Everything several polls hand on: codes, spikes, and the watermarks in order."""
    codes, times, chans, marks = [], [], [], []
    for _ in range(polls):
        ev = source.poll(timeout_s).in_seconds()
        codes += ev.codes
        times += list(ev.spike_times)
        chans += list(ev.spike_channels)
        if ev.watermark is not None:
            marks.append(ev.watermark)
    return codes, np.array(times), np.array(chans), marks


# ====================================================================== Plexon
NewTimestamps = namedtuple("NewTimestamps", "num_timestamps, timestamp, source_num_or_type, channel, unit")
GlobalParameters = namedtuple("GlobalParameters", "opx_system_type, opx_software_version, opx_sdk_version, "
                              "num_sources, source_ids, num_spike_chans, num_cont_chans, num_event_chans, "
                              "num_other_chans, timestamp_frequency, client_sample_rate_limit, bits_per_sample, "
                              "minimize_client_latency")
SPK, DI, FP = 4, 10, 6
SOURCES = {SPK: ("SPK", 1, 8, 1), DI: ("DI", 4, 25, 1), FP: ("FP", 5, 8, 1)}


def fake_pyopxclient(batches: list, connects: list[int]):
    """`batches`: lists of (t s, source, channel, unit), or "error".  `connects`: results of connect()."""
    mod = types.ModuleType("pyopxclient")
    mod.OPX_ERROR_NOERROR, mod.SPIKE_TYPE, mod.EVENT_TYPE, mod.OPX_DAQ_STOPPED = 0, 1, 4, 1

    class Lib:
        def get_opx_system_status(self):
            return 2  # OPX_DAQ_STARTED

    class PyOPXClientAPI:
        buffer = 32  # like max_opx_data: upstream's lists are always this long

        def __init__(self, *, max_opx_data=100000):
            self.opx_client, self.connected, self.last_result = Lib(), False, 0
            self.connect_calls = 0
            mod.client = self

        def connect(self):
            self.connect_calls += 1
            self.last_result = connects.pop(0) if connects else 0
            self.connected = self.last_result == 0

        def disconnect(self):
            self.connected = False

        def get_global_parameters(self):
            return GlobalParameters(4, 1210, 200, 3, tuple(SOURCES), 8, 8, 25, 0, 40000.0, 1000.0, 16, 1)

        def get_source_info(self, key):
            if isinstance(key, int):
                return SOURCES[key]
            number = next(n for n, v in SOURCES.items() if v[0] == key)
            return (number, *SOURCES[number][1:])

        def opx_wait(self, timeout):
            pass

        def get_new_data(self, timestamps_only=False):
            assert timestamps_only
            batch = batches.pop(0) if batches else []
            if batch == "error":
                self.last_result = -3
                return NewTimestamps(0, [0.0] * self.buffer, [0] * self.buffer, [0] * self.buffer, [0] * self.buffer)
            self.last_result = 0
            pad = self.buffer - len(batch)  # stale entries past num_timestamps, as upstream returns
            cols = list(zip(*batch)) if batch else [(), (), (), ()]
            return NewTimestamps(len(batch), list(cols[0]) + [999.0] * pad, list(cols[1]) + [SPK] * pad,
                                 list(cols[2]) + [1] * pad, list(cols[3]) + [1] * pad)

    mod.PyOPXClientAPI = PyOPXClientAPI
    return mod


def plexon(monkeypatch, batches, connects=(), **options):
    mod = fake_pyopxclient(list(batches), list(connects))
    monkeypatch.setitem(sys.modules, "pyopxclient", mod)
    return build_source("plexon", {"reconnect_s": "0", **options}), mod


def test_plexon_decodes_spikes_and_strobed_words_and_slices_the_padded_lists(monkeypatch):
    batches = [[(1.000, SPK, 1, 0), (1.001, SPK, 3, 2), (1.002, DI, 9, 0x8000 | 37), (1.003, DI, 1, 0),
                (1.004, FP, 2, 0), (1.010, SPK, 8, 1)],
               [(1.500, SPK, 2, 1)], [(2.000, SPK, 2, 1)]]
    source, _ = plexon(monkeypatch, batches)
    assert source.channels == 8
    codes, times, chans, marks = drain(source)
    assert codes == [(1.002, 37)]            # port B's high bit masked; single-bit event (word 0) ignored
    assert times.tolist() == [1.000, 1.001, 1.010, 1.500, 2.000]
    assert chans.tolist() == [0, 2, 7, 1, 1]   # 1-based OmniPlex channels -> 0-based
    assert marks == sorted(marks) and marks[-1] == pytest.approx(2.000 - 0.05)
    assert max(times) < 999                   # the stale padding was never read


def test_plexon_sorted_units_leave_unsorted_spikes_out(monkeypatch):
    source, _ = plexon(monkeypatch, [[(1.0, SPK, 1, 0), (1.1, SPK, 1, 1), (1.2, SPK, 2, 2)]], units="sorted")
    _, times, _, _ = drain(source, polls=1)
    assert times.tolist() == [1.1, 1.2]


def test_plexon_lost_connection_drops_the_codes_the_gap_cuts_and_reconnects(monkeypatch, caplog):
    batches = [[(1.00, SPK, 1, 1), (1.05, DI, 1, 11)],   # code 11: window runs into the gap
               "error",
               [(3.00, SPK, 1, 1), (3.10, DI, 1, 12)],
               [(4.00, SPK, 1, 1)]]
    with caplog.at_level(logging.WARNING):
        source, mod = plexon(monkeypatch, batches, connects=[0, -1, 0])
        codes, times, _, marks = drain(source, polls=8)
    assert codes == [(3.10, 12)]
    assert "error -3" in caplog.text and "reconnected" in caplog.text and "code 11" in caplog.text
    assert mod.client.connect_calls == 3 and source.hold.dropped == 1
    assert times.tolist() == [1.00, 3.00, 4.00]
    assert marks == sorted(marks)


def test_plexon_clock_going_back_hands_on_the_old_stream_first(monkeypatch):
    source, _ = plexon(monkeypatch, [[(50.0, SPK, 1, 1), (50.1, DI, 1, 5)], [(51.0, SPK, 1, 1)],
                                     [(0.2, SPK, 2, 1), (0.3, DI, 1, 6)], [(1.0, SPK, 1, 1)]])
    first = source.poll(0).in_seconds(), source.poll(0).in_seconds()
    assert first[1].codes == [(50.1, 5)]
    restart = source.poll(0).in_seconds()
    assert restart.watermark == 51.0 and len(restart.spike_times) == 0
    after = [source.poll(0).in_seconds() for _ in range(2)]
    assert after[0].spike_times.tolist() == [0.2]
    assert [c for ev in after for c in ev.codes] == [(0.3, 6)]
    assert after[-1].watermark < 1.0


def test_plexon_without_its_client_says_what_is_needed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopxclient", None)
    with pytest.raises(ConfigError, match="PyOPXClient.*Windows PC that runs OmniPlex Server"):
        build_source("plexon", {})


def test_plexon_unknown_source_and_failed_connect_are_clear(monkeypatch):
    with pytest.raises(ConfigError, match="no event source 'DIGITAL'.*4 SPK, 6 FP, 10 DI"):
        plexon(monkeypatch, [], event_source="DIGITAL")
    with pytest.raises(ConfigError, match="source 6 \\(FP\\) is of type 5, not a spike source"):
        plexon(monkeypatch, [], spike_source="FP")
    with pytest.raises(SessionError, match="could not connect to OmniPlex Server"):
        plexon(monkeypatch, [], connects=[-1])


# =================================================================== Blackrock
class CBChannelType(enum.IntEnum):
    Any, Group, FrontEnd, AnalogIn, DigitalIn, DigitalOut, Serial, Audio = -1, 0, 1, 2, 3, 4, 5, 6


class CBPacketType(enum.IntEnum):
    SYSHEARTBEAT = 0x00
    SYSPROTOCOLMONITOR = 0x01


FS = 30000


def fake_pycbsdk(connects: list[int]):
    cbsdk = types.ModuleType("pycbsdk.cbsdk")
    cbsdk.CBChannelType, cbsdk.CBPacketType = CBChannelType, CBPacketType

    class Device:
        def __init__(self, params):
            self.params, self.spk, self.events, self.config, self.connect_calls = params, [], {}, {}, 0

        def send(self, packets):
            """pycbsdk's receiver thread calling the callbacks."""
            def run():
                for kind, pkt in packets:
                    targets = (self.spk if kind == "spk" else self.events.get(CBChannelType.DigitalIn, [])
                               if kind == "din" else self.config.get(CBPacketType.SYSHEARTBEAT, []))
                    for f in targets:
                        f(pkt)
            t = threading.Thread(target=run)
            t.start()
            t.join()

    cbsdk.create_params = lambda **kw: dict(kw)
    cbsdk.get_device = lambda params: setattr(cbsdk, "device", Device(params)) or cbsdk.device

    def connect(device, startup_sequence=True):
        device.connect_calls += 1
        return connects.pop(0) if connects else 50
    cbsdk.connect = connect
    cbsdk.disconnect = lambda device: None
    cbsdk.get_config = lambda device: {"sysfreq": FS, "channel_types": {
        **{c: CBChannelType.FrontEnd for c in range(1, 7)}, 7: CBChannelType.AnalogIn, 8: CBChannelType.DigitalIn}}
    cbsdk.register_spk_callback = lambda device, f: device.spk.append(f)
    cbsdk.register_event_callback = lambda device, ct, f: device.events.setdefault(ct, []).append(f)
    cbsdk.register_config_callback = lambda device, pt, f: device.config.setdefault(pt, []).append(f)
    package = types.ModuleType("pycbsdk")
    package.cbsdk = cbsdk
    return package, cbsdk


def header(t, chid, type_=0):
    return SimpleNamespace(time=t, chid=chid, type=type_, dlen=0, instrument=0, reserved=0)


def spike(t, chid, unit=0):
    return "spk", SimpleNamespace(header=header(t, chid, unit))


def din(t, value, event_type=2):
    return "din", SimpleNamespace(header=header(t, 8), valueRead=value, bitsChanged=0xFFFF, eventType=event_type)


def beat(t):
    return "beat", SimpleNamespace(header=header(t, 0x8000, CBPacketType.SYSHEARTBEAT))


def blackrock(monkeypatch, connects=(), **options):
    package, cbsdk = fake_pycbsdk(list(connects))
    monkeypatch.setitem(sys.modules, "pycbsdk", package)
    monkeypatch.setitem(sys.modules, "pycbsdk.cbsdk", cbsdk)
    return build_source("blackrock", options), cbsdk


def test_blackrock_decodes_spikes_and_strobed_words_on_the_heartbeat_clock(monkeypatch):
    source, cbsdk = blackrock(monkeypatch, inst_addr="127.0.0.1")
    assert source.channels == 6 and cbsdk.device.params["inst_addr"] == "127.0.0.1"
    cbsdk.device.send([spike(30000, 1), spike(30030, 3, 1), spike(30060, 2, 255), din(30300, 0x10000 | 42),
                       din(30400, 7, event_type=1), din(30500, 0), spike(30600, 9), beat(30900)])
    ev = source.poll(0.5).in_seconds()
    assert ev.codes == [] and ev.watermark == pytest.approx(1.010)   # code 42 held back until its window
    assert ev.spike_times.tolist() == [1.0, 1.001] and ev.spike_channels.tolist() == [0, 2]
    cbsdk.device.send([spike(40000, 4), beat(45000)])
    ev = source.poll(0.5).in_seconds()
    assert ev.codes == [(30300 / FS, 42)] and ev.watermark == pytest.approx(1.5)
    assert ev.spike_channels.tolist() == [3]


def test_blackrock_silence_opens_a_gap_drops_its_codes_and_reconnects(monkeypatch, caplog):
    source, cbsdk = blackrock(monkeypatch, connects=[50, 0, 50], stall_s="0.05", reconnect_s="0")
    cbsdk.device.send([beat(30000), din(30600, 11), beat(31000)])
    with caplog.at_level(logging.WARNING):
        source.poll(0.01)
        silent = [source.poll(0.1).in_seconds() for _ in range(2)]          # nothing comes: the NSP went silent
        cbsdk.device.send([beat(90000), din(91000, 12), beat(120000)])
        codes, _, _, marks = drain(source, polls=3, timeout_s=0.05)
    assert codes == [(91000 / FS, 12)] and source.hold.dropped == 1
    assert "no packets from the NSP" in caplog.text and "code 11" in caplog.text
    assert cbsdk.device.connect_calls >= 3
    assert all(ev.codes == [] for ev in silent) and marks == sorted(marks)


def test_blackrock_without_pycbsdk_or_a_device_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycbsdk", None)
    with pytest.raises(ConfigError, match="needs pycbsdk"):
        build_source("blackrock", {})
    with pytest.raises(SessionError, match="could not bring the NSP to RUNNING \\(run level 20\\)"):
        blackrock(monkeypatch, connects=[20])
