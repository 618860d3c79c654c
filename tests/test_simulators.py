"""The simulated rig in-process: screen frames in, event codes and spikes out."""

import time

import numpy as np
import pytest
import torch
import zmq

from recording_adapters.counting import SpikeCounter
from simulators.alexnet import LAYERS, AlexNet, seeded_alexnet
from simulators.neuron import ConvNetUnits
from simulators.rig import SimulatedRig
from simulators.rig_clock import RigClock
from xdream import config as config_mod
from xdream import protocol
from xdream.protocol import MsgType


@pytest.fixture(scope="module")
def sim_cfg():
    return config_mod.load(None).simulator


def test_alexnet_layer_shapes():
    net = AlexNet().eval()
    x = torch.zeros(1, 3, 224, 224)
    shapes = {name: tuple(net(x, until=name).shape) for name in LAYERS}
    assert shapes == {"conv1": (1, 64, 55, 55), "conv2": (1, 192, 27, 27), "conv3": (1, 384, 13, 13),
                      "conv4": (1, 256, 13, 13), "conv5": (1, 256, 13, 13), "fc6": (1, 4096),
                      "fc7": (1, 4096), "fc8": (1, 1000)}
    with pytest.raises(ValueError, match="unknown layer"):
        net(x, until="pool9")


def test_seeded_network_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = seeded_alexnet(7), seeded_alexnet(7)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a.conv3.weight, b.conv3.weight)
    assert not torch.equal(a.conv3.weight, seeded_alexnet(8).conv3.weight)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA case")
def test_units_pick_their_device_by_the_generators_rule(sim_cfg):
    """server.generators.base.pick_device: 'cuda' without a CUDA device is a clear error, not torch's."""
    from xdream.errors import GeneratorError
    with pytest.raises(GeneratorError, match="no CUDA device"):
        ConvNetUnits(sim_cfg, "cuda")
    assert ConvNetUnits(sim_cfg, "auto").device == torch.device("cpu")


def test_units_rates_are_capped_and_z_scored(sim_cfg):
    units = ConvNetUnits(sim_cfg, "cpu")
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, size=(16, 256, 256, 3), dtype=np.uint8)
    rates = units.rates(views)
    assert rates.shape == (16, 2)
    assert (rates >= 0).all() and (rates <= sim_cfg.max_hz - sim_cfg.baseline_hz).all()
    # white noise is half the calibration set: its z-scores centre near 0
    z = (units.activations(views) - units.mean) / units.std
    assert abs(z.mean()) < 1.5


def _screen(ctx, endpoint):
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(endpoint)
    return push


def test_rig_turns_screen_frames_into_codes_and_spikes(sim_cfg, zmq_ctx):
    ctx = zmq_ctx
    rig = SimulatedRig(sim_cfg, context=ctx)
    push = _screen(ctx, rig.endpoint)
    period = 1 / 60
    frame = np.full((256, 256, 3), 128, np.uint8)
    for i, code in enumerate((5, 6, 7)):
        body = protocol.ScreenFrame(code, 1 + 12 * i, period, 0.0, 256, 256)
        push.send_multipart(protocol.encode(MsgType.SCREEN_FRAME, body, images=[frame]))
    push.send_multipart(protocol.encode(MsgType.SCREEN_FRAME, protocol.ScreenFrame(0, 36, period, 0.0, 0, 0)))
    counter = SpikeCounter(rig.channels)
    counter.expect(0, [("p5", 5), ("p6", 6), ("p7", 7)])
    events, counts = [], []
    for _ in range(50):
        ev = rig.poll(0.05)
        events.append(ev)
        counts += counter.add(ev)
        if len(counts) == 3:
            break
    codes = [c for ev in events for c in ev.codes]
    assert [c for _, c in codes] == [5, 6, 7]
    # the rig's clock: frame index times the nominal period, handed on as samples of its 30 kHz clock
    assert all(ev.rate == 30000 for ev in events if not ev.empty)
    assert [t for t, _ in codes] == [500, 6500, 12500]
    assert all(np.asarray(ev.spike_times).dtype.kind == "i" for ev in events if len(ev.spike_times))
    assert [c.pid for c in counts] == ["p5", "p6", "p7"]
    watermarks = [ev.watermark for ev in events]
    assert watermarks == sorted(watermarks)
    push.close()
    rig.close()


def test_rig_sees_only_its_receptive_field(sim_cfg):
    rig = SimulatedRig(sim_cfg)
    frame = np.zeros((400, 600, 3), np.uint8)
    frame[72:328, 172:428] = 200   # the centred 256-px square
    view = rig._receptive_field(frame)
    rig.close()
    assert view.shape == (256, 256, 3) and (view == 200).all()


def test_rig_time_never_goes_back():
    clock = RigClock()
    t1 = clock.time_of(protocol.ScreenFrame(1, 100, 0.01, 0.0, 0, 0))
    t2 = clock.time_of(protocol.ScreenFrame(1, 5, 0.01, 0.0, 0, 0))   # a restarted presenter
    t3 = clock.time_of(protocol.ScreenFrame(1, 6, 0.01, 0.0, 0, 0))
    assert t1 == pytest.approx(1.0) and t2 >= t1 and t3 == pytest.approx(t2 + 0.01)


def _rig_output(sim_cfg, ctx, frames, per_poll):
    """All codes and spikes the rig makes from `frames`, sent `per_poll` at a time (a rig
    busy with its network collects several frames in one poll; an idle one, one)."""
    rig = SimulatedRig(sim_cfg, context=ctx)
    push = _screen(ctx, rig.endpoint)
    codes, spikes = [], []
    try:
        for start in range(0, len(frames), per_poll):
            for frame in frames[start:start + per_poll]:
                push.send_multipart(frame)
            time.sleep(0.2)             # all of this step's frames queued: one poll takes them all
            polls = [rig.poll(5.0)]
            while rig.backlog:          # a poll works through a bounded share of what it took
                polls.append(rig.poll(0.0))
            for events in polls:
                codes += events.codes
                spikes += zip(events.spike_times.round(9).tolist(), events.spike_channels.tolist())
    finally:
        push.close()
        rig.close()
    return codes, sorted(spikes)


def test_the_rig_answers_the_same_however_many_frames_one_poll_collects(sim_cfg, zmq_ctx):
    """Issue 12, defect 12: the end of one block (an idle frame) and the next block's onsets
    collected by one poll gave those onsets other rig times (other baseline spikes) than
    when polled one by one, so a seeded session differed from run to run under load."""
    period = 1 / 60
    rng = np.random.default_rng(5)
    frames, index = [], 1
    for block in range(2):
        for code in (1, 2, 3):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            body = protocol.ScreenFrame(code + 10 * block, index, period, 0.0, 64, 64)
            frames.append(protocol.encode(MsgType.SCREEN_FRAME, body, images=[image]))
            index += 12
        # the block is over: the screen goes gray (the presenter's tap sends code 0)
        frames.append(protocol.encode(MsgType.SCREEN_FRAME, protocol.ScreenFrame(0, index, period, 0.0, 0, 0)))
    one_by_one = _rig_output(sim_cfg, zmq_ctx, frames, 1)
    all_at_once = _rig_output(sim_cfg, zmq_ctx, frames, len(frames))
    assert [c for _, c in one_by_one[0]] == [1, 2, 3, 11, 12, 13]
    assert all_at_once[0] == one_by_one[0]      # the same onset times
    assert all_at_once[1] == one_by_one[1]      # and the same spikes
