import math

import msgpack
import numpy as np
import pytest

from xdream import protocol
from xdream.errors import ProtocolError
from xdream.protocol import MsgType


def _block():
    specs = [protocol.PresentationSpec("b0000-000", 1, "a/g000/00000", 4, 6),
             protocol.PresentationSpec("b0000-001", 2, "ref/rings", 4, 6)]
    images = [np.arange(72, dtype=np.uint8).reshape(4, 6, 3), np.full((4, 6, 3), 7, np.uint8)]
    return protocol.Block(0, 0, specs), images


def _header(frames):
    return msgpack.unpackb(frames[0])


def _with_header(header, extra=()):
    return [msgpack.packb(header), *extra]


@pytest.mark.parametrize("msg_type, body", [
    (MsgType.HELLO, protocol.Hello("recorder", "rec", 4)),
    (MsgType.WELCOME, protocol.Welcome("presenter-1", 1.0, 10.0, {"on_ms": 100.0})),
    (MsgType.HEARTBEAT, protocol.Heartbeat()),
    (MsgType.SHOWN, protocol.Shown(3, "b0003-001", "shown", 12.5, 6, 1)),
    (MsgType.SHOWN, protocol.Shown(3, "b0003-002", "aborted")),
    (MsgType.COUNTS, protocol.Counts(3, "b0003-001", "ok", [1.0, 0.0], [0.0, 2.0], 4.25)),
    (MsgType.ACK, protocol.Ack(17)),
    (MsgType.ERROR, protocol.Error("no", 3)),
    (MsgType.BYE, protocol.Bye("quit")),
    (MsgType.END, protocol.End("finished")),
])
def test_round_trip(msg_type, body):
    msg = protocol.decode(protocol.encode(msg_type, body, session="s1", seq=5))
    assert (msg.type, msg.body, msg.session, msg.seq) == (msg_type, body, "s1", 5)


def test_block_round_trip_keeps_pixels_zero_copy_views():
    block, images = _block()
    frames = protocol.encode(MsgType.BLOCK, block, images=images)
    assert len(frames) == 3 and isinstance(frames[1], memoryview)
    msg = protocol.decode([bytes(f) for f in frames])
    assert msg.body == block
    for got, sent in zip(msg.images(), images):
        np.testing.assert_array_equal(got, sent)


def test_screen_frame_idle_marker_has_no_image():
    body = protocol.ScreenFrame(0, 120, 1 / 60, 0.0, 0, 0)
    msg = protocol.decode(protocol.encode(MsgType.SCREEN_FRAME, body))
    assert msg.body == body and msg.frames == ()


def test_encode_refuses_float_images():
    block, images = _block()
    with pytest.raises(ValueError, match="uint8"):
        protocol.encode(MsgType.BLOCK, block, images=[i.astype(float) for i in images])


def test_every_message_carries_the_protocol_version():
    assert _header(protocol.encode(MsgType.HEARTBEAT, protocol.Heartbeat()))["v"] == protocol.PROTOCOL_VERSION


GOOD = {"v": protocol.PROTOCOL_VERSION, "type": "shown", "session": "s", "seq": 1, "t": 0.0,
        "body": {"block_id": 0, "pid": "p", "status": "shown", "onset": 1.0, "frames": 6, "dropped": 0}}


def _bad(**changes):
    header = {**GOOD, **changes}
    return header


def _bad_body(**changes):
    return {**GOOD, "body": {**GOOD["body"], **changes}}


@pytest.mark.parametrize("frames, message", [
    ([], "empty"),
    ([b"\xc1\xc1not msgpack"], "not valid msgpack"),
    ([msgpack.packb([1, 2])], "not a map"),
    (_with_header(_bad(v=99)), "protocol version 99"),
    (_with_header(_bad(type="launch")), "unknown message type"),
    (_with_header(_bad(seq=-1)), "seq"),
    (_with_header(_bad(seq=True)), "seq"),
    (_with_header(_bad(session=3)), "session"),
    (_with_header(_bad(body=[1])), "must be a map"),
    (_with_header(_bad_body(status="maybe")), "status"),
    (_with_header(_bad_body(onset=None)), "without a finite onset"),
    (_with_header(_bad_body(frames="6")), "must be an integer"),
    (_with_header(_bad_body(frames=True)), "must be an integer"),
    (_with_header(_bad_body(frames=-1)), "negative"),
    (_with_header(_bad_body(extra=1)), "unknown fields"),
    (_with_header({**GOOD, "body": {"block_id": 0, "status": "shown"}}), "missing field 'pid'"),
    (_with_header(GOOD, [b"\x00" * 3]), "carries 1 image frames, expected 0"),
])
def test_decode_rejects_malformed(frames, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(frames)


@pytest.mark.parametrize("counts, message", [
    ([1.0, math.nan], "not finite"),
    ([1.0, -2.0], "not finite"),
    ([1.0, math.inf], "not finite"),
    ([], "empty"),
])
def test_decode_rejects_bad_spike_counts(counts, message):
    header = {**GOOD, "type": "counts",
              "body": {"block_id": 0, "pid": "p", "status": "ok", "counts": counts}}
    with pytest.raises(ProtocolError, match=message):
        protocol.decode([msgpack.packb(header)])


def test_decode_rejects_image_frame_of_wrong_size():
    block, images = _block()
    frames = [bytes(f) for f in protocol.encode(MsgType.BLOCK, block, images=images)]
    frames[2] = frames[2][:-1]
    with pytest.raises(ProtocolError, match="image frame 1 has 71 bytes, expected 72"):
        protocol.decode(frames)


def test_decode_rejects_duplicate_codes_and_impossible_sizes():
    spec = {"pid": "a", "code": 5, "image_id": "x", "height": 2, "width": 2}
    header = {**GOOD, "type": "block",
              "body": {"block_id": 0, "generation": 0, "presentations": [spec, {**spec, "pid": "b"}]}}
    with pytest.raises(ProtocolError, match="repeats an event code"):
        protocol.decode([msgpack.packb(header), b"\x00" * 12, b"\x00" * 12])
    header["body"]["presentations"] = [{**spec, "code": 0}]
    with pytest.raises(ProtocolError, match="outside 1..65535"):
        protocol.decode([msgpack.packb(header), b"\x00" * 12])
    header["body"]["presentations"] = [{**spec, "height": 0}]
    with pytest.raises(ProtocolError, match="impossible size"):
        protocol.decode([msgpack.packb(header)])


def test_hello_checks_role_and_channels():
    with pytest.raises(ProtocolError, match="role"):
        protocol.Hello("eye-tracker", "x").check()
    with pytest.raises(ProtocolError, match="channels"):
        protocol.Hello("recorder", "x", 0).check()


def test_protocol_module_imports_neither_torch_nor_psychopy():
    import subprocess
    import sys
    code = ("import sys, xdream.protocol, xdream.peer, stimulus_client.presenter, recording_adapters.recorder;"
            "bad = [m for m in ('torch', 'psychopy') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
