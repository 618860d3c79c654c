"""The caffemodel converter, against caffemodels this file writes itself.

The encoder below is deliberately independent of server/generators/caffe.py:
its own varints, tags and field numbers (typed here from BVLC/caffe
src/caffe/proto/caffe.proto), so that a misreading shared by writer and
reader cannot pass.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from server.generators import caffe
from server.generators.deepsim import DeePSiMFc6, DeepSimGenerator, random_init
from xdream.config import GeneratorConfig
from xdream.errors import GeneratorError

REPO = Path(__file__).resolve().parents[1]

# --- an independent protobuf encoder for caffe.NetParameter ----------------
# caffe.proto: NetParameter{name 1, layers 2 (V1), input 3, input_dim 4, layer 100}
NET_NAME, NET_V1_LAYERS, NET_INPUT, NET_INPUT_DIM, NET_LAYER = 1, 2, 3, 4, 100
# LayerParameter{name 1, type 2, bottom 3, top 4, param 6, blobs 7, inner_product_param 117}
L_NAME, L_TYPE, L_BOTTOM, L_TOP, L_PARAM, L_BLOBS, L_IP = 1, 2, 3, 4, 6, 7, 117
# V1LayerParameter{layer 1 (V0), bottom 2, top 3, name 4, type 5, blobs 6, blobs_lr 7, weight_decay 8}
V1_V0, V1_BOTTOM, V1_TOP, V1_NAME, V1_TYPE, V1_BLOBS, V1_BLOBS_LR, V1_DECAY = 1, 2, 3, 4, 5, 6, 7, 8
V1_CONVOLUTION, V1_INNER_PRODUCT, V1_RELU, V1_DECONVOLUTION = 4, 14, 18, 39
# BlobProto{num 1, channels 2, height 3, width 4, data 5, diff 6, shape 7, double_data 8, double_diff 9}
B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH, B_DATA, B_DIFF, B_SHAPE, B_DDATA, B_DDIFF = range(1, 10)
SHAPE_DIM = 1            # BlobShape{dim 1 [packed]}
PARAM_LR_MULT = 3        # ParamSpec{lr_mult 3 (float)}
IP_NUM_OUTPUT, IP_TRANSPOSE = 1, 6   # InnerProductParameter


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1               # negatives as 64-bit two's complement
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_int(number: int, n: int) -> bytes:
    return tag(number, 0) + varint(n)


def f_len(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def f_str(number: int, s: str) -> bytes:
    return f_len(number, s.encode())


def f_float(number: int, x: float) -> bytes:
    return tag(number, 5) + np.float32(x).astype("<f4").tobytes()


def packed(number: int, values, dtype="<f4") -> bytes:
    return f_len(number, np.ascontiguousarray(values, dtype).tobytes())


def unpacked(number: int, values, dtype="<f4") -> bytes:
    """One (tag, value) record per element, built with numpy for 56 M values."""
    a = np.ascontiguousarray(values, dtype).reshape(-1)
    size = a.dtype.itemsize
    t = np.frombuffer(tag(number, 5 if size == 4 else 1), np.uint8)
    rec = np.empty((a.size, len(t) + size), np.uint8)
    rec[:, :len(t)] = t
    rec[:, len(t):] = a.view(np.uint8).reshape(-1, size)
    return rec.tobytes()


def blob_modern(values: np.ndarray, shape=None, data=None) -> bytes:
    shape = values.shape if shape is None else shape
    dims = f_len(B_SHAPE, f_len(SHAPE_DIM, b"".join(varint(d) for d in shape)))
    return dims + (packed(B_DATA, values) if data is None else data)


def blob_legacy(values: np.ndarray, nchw) -> bytes:
    dims = b"".join(f_int(k, d) for k, d in zip((B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH), nchw) if d)
    return dims + unpacked(B_DATA, values)


def layer_modern(name: str, type_: str, blobs=(), extra=b"") -> bytes:
    body = f_str(L_NAME, name) + f_str(L_TYPE, type_) + f_str(L_BOTTOM, "in") + f_str(L_TOP, name)
    body += b"".join(f_len(L_PARAM, f_float(PARAM_LR_MULT, 0.0)) for _ in blobs)   # fields to skip
    return f_len(NET_LAYER, body + extra + b"".join(f_len(L_BLOBS, b) for b in blobs))


def layer_v1(name: str, type_code: int, blobs=(), extra=b"") -> bytes:
    # blobs before name and type, and unpacked blobs_lr floats: order must not matter
    body = b"".join(f_len(V1_BLOBS, b) for b in blobs) + f_str(V1_BOTTOM, "in") + f_str(V1_TOP, name)
    body += b"".join(f_float(V1_BLOBS_LR, 1.0) + f_float(V1_DECAY, 1.0) for _ in blobs)
    return f_len(NET_V1_LAYERS, body + f_str(V1_NAME, name) + f_int(V1_TYPE, type_code) + extra)


def net(*layers: bytes) -> bytes:
    header = f_str(NET_NAME, "generator") + f_str(NET_INPUT, "feat")
    header += b"".join(f_int(NET_INPUT_DIM, d) for d in (1, 4096))
    return header + b"".join(layers)


def legacy_dims(t: torch.Tensor) -> tuple[int, int, int, int]:
    """caffe's V1 blob dims: padded with leading 1s to num/channels/height/width."""
    return (1,) * (4 - t.dim()) + tuple(t.shape)


def fc6_net(state: dict[str, torch.Tensor], legacy: bool) -> bytes:
    """The fc6 generator in the order of its prototxt, ReLUs and reshape included."""
    names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in state))
    layers = [layer_v1("feat_relu", V1_RELU) if legacy else layer_modern("feat", "Input")]
    for i, name in enumerate(names):
        w, b = state[f"{name}.weight"].numpy(), state[f"{name}.bias"].numpy()
        if legacy:
            code = V1_INNER_PRODUCT if w.ndim == 2 else V1_DECONVOLUTION
            blobs = [blob_legacy(t, legacy_dims(torch.from_numpy(t))) for t in (w, b)]
            layers.append(layer_v1(name, code, blobs))
        else:
            type_ = "InnerProduct" if w.ndim == 2 else "Deconvolution"
            layers.append(layer_modern(name, type_, [blob_modern(w), blob_modern(b)]))
        if name == "defc5":
            layers.append(layer_modern("reshape", "Reshape") if not legacy else b"")
        if i < len(names) - 1:
            layers.append(layer_v1(f"relu_{name}", V1_RELU) if legacy else layer_modern(f"relu_{name}", "ReLU"))
    return net(*layers)


# --- full-size fc6 caffemodels, written once per module ---------------------

@pytest.fixture(scope="module")
def fc6_state() -> dict[str, torch.Tensor]:
    model = DeePSiMFc6()
    random_init(model, seed=7)          # contrasty images, so that equal images mean something
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def modern_file(tmp_path_factory, fc6_state) -> Path:
    path = tmp_path_factory.mktemp("caffe") / "generator.caffemodel"
    path.write_bytes(fc6_net(fc6_state, legacy=False))
    return path


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory, fc6_state) -> Path:
    path = tmp_path_factory.mktemp("caffe") / "generator_v1.caffemodel"
    path.write_bytes(fc6_net(fc6_state, legacy=True))
    return path


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xdream.cli", "convert-caffe", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory, modern_file) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("out") / "sub" / "fc6.pt"
    return out, run_cli(modern_file, "--layer", "fc6", "--out", out)


def assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(expected)
    for key, tensor in expected.items():
        assert state[key].dtype == torch.float32, key
        assert torch.equal(state[key], tensor), key


def test_modern_packed_round_trip(modern_file, fc6_state):
    assert_same(caffe.caffe_to_state_dict(modern_file, "fc6"), fc6_state)


def test_legacy_v1_unpacked_round_trip(legacy_file, fc6_state):
    assert_same(caffe.caffe_to_state_dict(legacy_file, "fc6"), fc6_state)


def test_cli_writes_the_state_dict_and_its_checksum(cli_out, fc6_state):
    out, proc = cli_out
    assert proc.returncode == 0, proc.stderr
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert str(out) in proc.stdout and "24 tensors" in proc.stdout and sha in proc.stdout
    assert not out.with_name(out.name + ".part").exists()
    assert not list(out.parent.glob(f".{out.name}.*"))    # xdream.files.write_atomic's temp file
    assert_same(torch.load(out, weights_only=True), fc6_state)


def test_converted_weights_generate_the_same_images(cli_out, fc6_state, tmp_path):
    direct = tmp_path / "direct.pt"
    torch.save(fc6_state, direct)
    codes = np.random.default_rng(0).normal(size=(2, 4096))
    images = [DeepSimGenerator(GeneratorConfig(device="cpu", weights=str(p)), 128).generate(codes)
              for p in (cli_out[0], direct)]
    np.testing.assert_array_equal(images[0], images[1])
    assert images[0].std() > 5         # real images, not a flat gray


def test_cli_reports_errors_with_status_2(tmp_path):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(net(layer_modern("defc7", "InnerProduct", [blob_modern(np.zeros((4, 4), np.float32))]))[:-3])
    proc = run_cli(bad, "--layer", "fc6", "--out", tmp_path / "x.pt")
    assert proc.returncode == 2 and "truncated" in proc.stderr
    assert not (tmp_path / "x.pt").exists()
    proc = run_cli(bad, "--layer", "fc9", "--out", tmp_path / "x.pt")
    assert proc.returncode == 2 and "unknown DeePSiM generator 'fc9'" in proc.stderr


def test_truncated_full_file_is_a_clear_error(modern_file, tmp_path):
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(modern_file.read_bytes()[: modern_file.stat().st_size // 2])
    with pytest.raises(GeneratorError, match=rf"{cut.name} is not a readable caffemodel.*truncated"):
        caffe.caffe_to_state_dict(cut, "fc6")


def small_net() -> bytes:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    return net(layer_modern("ip", "InnerProduct", [blob_modern(w), blob_modern(np.ones(3, np.float32))]),
               layer_v1("conv", V1_CONVOLUTION, [blob_legacy(np.ones((2, 1, 2, 2), np.float32), (2, 1, 2, 2))]))


def test_every_truncation_is_a_generator_error_or_a_shorter_net():
    data = small_net()
    full = caffe.parse_net(data)
    for cut in range(len(data)):
        try:
            layers = caffe.parse_net(data[:cut])
        except caffe.WireError as exc:
            assert "truncated" in str(exc)
            continue
        # a cut on a field boundary is valid protobuf: fewer layers or blobs, never garbage
        assert len(layers) <= len(full)


def test_wrong_shape_names_the_layer_and_both_shapes(tmp_path):
    path = tmp_path / "wrong.caffemodel"
    w = np.zeros((256, 64, 4, 4), np.float32)
    path.write_bytes(net(layer_modern("deconv3", "Deconvolution", [blob_modern(w), blob_modern(np.zeros(64))])))
    with pytest.raises(GeneratorError, match=r"layer deconv3: deconv3.weight has shape \(256, 64, 4, 4\), "
                                             r"the DeePSiM fc6 generator expects \(256, 128, 4, 4\)"):
        caffe.caffe_to_state_dict(path, "fc6")


def test_legacy_shape_mismatch_names_the_layer(tmp_path):
    path = tmp_path / "wrong_v1.caffemodel"
    w = np.zeros((4096, 2048), np.float32)
    path.write_bytes(net(layer_v1("defc6", V1_INNER_PRODUCT, [blob_legacy(w, (1, 1, 4096, 2048))])))
    with pytest.raises(GeneratorError, match=r"layer defc6: defc6.weight has shape \(4096, 2048\), "
                                             r"the DeePSiM fc6 generator expects \(4096, 4096\)"):
        caffe.caffe_to_state_dict(path, "fc6")


def test_missing_and_extra_layers(tmp_path):
    path = tmp_path / "partial.caffemodel"
    path.write_bytes(net(layer_modern("deconv0", "Deconvolution",
                                      [blob_modern(np.zeros((32, 3, 4, 4), np.float32)),
                                       blob_modern(np.zeros(3, np.float32))])))
    with pytest.raises(GeneratorError, match=r"22 tensors of the DeePSiM fc6 generator are missing.*defc7.weight"):
        caffe.caffe_to_state_dict(path, "fc6")
    path.write_bytes(net(layer_modern("conv1", "Convolution", [blob_modern(np.ones((2, 3, 1, 1), np.float32))])))
    with pytest.raises(GeneratorError, match=r"does not have: conv1 \(Convolution\)"):
        caffe.caffe_to_state_dict(path, "fc6")
    path.write_bytes(net(layer_modern("deconv0", "Deconvolution", [blob_modern(np.zeros(1, np.float32))] * 2),
                         layer_modern("deconv0", "Deconvolution", [blob_modern(np.zeros(1, np.float32))] * 2)))
    with pytest.raises(GeneratorError, match="'deconv0' holds blobs twice"):
        caffe.caffe_to_state_dict(path, "fc6")


def test_extra_layer_with_empty_blobs_is_logged_not_fatal(modern_file, fc6_state, tmp_path, caplog):
    # protobuf concatenation appends to repeated fields: one more `layer`
    path = tmp_path / "with_extra.caffemodel"
    path.write_bytes(modern_file.read_bytes() + layer_modern("loss_scale", "Scale", [blob_modern(np.zeros(0))]))
    with caplog.at_level(logging.INFO, logger="server.generators.caffe"):
        state = caffe.caffe_to_state_dict(path, "fc6")
    assert torch.equal(state["deconv0.weight"], fc6_state["deconv0.weight"])
    assert "loss_scale" in caplog.text


def test_not_a_caffemodel(tmp_path):
    cases = {
        "generator.prototxt": b'name: "generator"\nlayer {\n  name: "defc7"\n  type: "InnerProduct"\n}\n',
        "empty.caffemodel": b"",
        "zip.caffemodel": b"PK\x03\x04" + bytes(range(256)),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(GeneratorError, match=r"not a readable caffemodel.*looks like text: a \.prototxt"):
        caffe.caffe_to_state_dict(tmp_path / "generator.prototxt", "fc6")
    with pytest.raises(GeneratorError, match="holds no caffe layers"):
        caffe.caffe_to_state_dict(tmp_path / "empty.caffemodel", "fc6")
    with pytest.raises(GeneratorError, match="not a readable caffemodel"):
        caffe.caffe_to_state_dict(tmp_path / "zip.caffemodel", "fc6")
    with pytest.raises(GeneratorError, match="cannot read caffemodel"):
        caffe.caffe_to_state_dict(tmp_path / "absent.caffemodel", "fc6")


# --- the reader's edge cases, on small synthetic layers ---------------------

def only_blob(data: bytes) -> caffe.CaffeBlob:
    (layer,) = caffe.parse_net(data)
    (blob,) = layer.blobs
    return blob


def one_blob_net(blob: bytes) -> bytes:
    return net(layer_modern("x", "Convolution", [blob]))


def test_packed_unpacked_and_split_data_read_the_same():
    v = np.linspace(-3, 3, 10).astype(np.float32)
    encodings = [
        packed(B_DATA, v),
        unpacked(B_DATA, v),
        packed(B_DATA, v[:4]) + packed(B_DATA, v[4:]),          # packed in two chunks
        unpacked(B_DATA, v[:3]) + packed(B_DATA, v[3:7]) + unpacked(B_DATA, v[7:]),
        unpacked(B_DATA, v[:5]) + f_int(B_NUM, 10) + unpacked(B_DATA, v[5:]),  # a run broken by another field
    ]
    for data in encodings:
        blob = only_blob(one_blob_net(data + f_len(B_SHAPE, f_len(SHAPE_DIM, varint(10)))))
        np.testing.assert_array_equal(blob.data, v)


def test_adjacent_unpacked_blobs_stay_apart():
    # the fast run over (tag, value) records must stop at its own blob's end
    a, b = np.arange(7, dtype=np.float32), -np.arange(5, dtype=np.float32)
    data = net(layer_v1("conv", V1_CONVOLUTION, [blob_legacy(a, (7, 1, 1, 1)), blob_legacy(b, (1, 1, 1, 5))]))
    (layer,) = caffe.parse_net(data)
    np.testing.assert_array_equal(layer.blobs[0].data, a)
    np.testing.assert_array_equal(layer.blobs[1].data, b)
    assert layer.blobs[0].legacy == (7, 1, 1, 1) and layer.blobs[1].legacy == (1, 1, 1, 5)
    assert layer.name == "conv" and layer.type == "Convolution"


def test_double_data_packed_and_unpacked_become_float32():
    v = np.array([0.5, -1.25, 3.0])
    for data in (packed(B_DDATA, v, "<f8"), unpacked(B_DDATA, v, "<f8")):
        (layer,) = caffe.parse_net(one_blob_net(f_len(B_SHAPE, f_len(SHAPE_DIM, varint(3))) + data))
        np.testing.assert_array_equal(layer.blobs[0].data, v)
        weight = caffe.blob_tensors(layer)["x.weight"]
        assert weight.dtype == torch.float32 and weight.tolist() == v.tolist()


def test_unknown_fields_of_every_wire_type_are_skipped():
    junk = f_int(999, 2**63 + 5) + tag(998, 1) + bytes(8) + tag(997, 5) + bytes(4) + f_len(996, b"\xff" * 40)
    diff = unpacked(B_DIFF, np.ones(6)) + unpacked(B_DDIFF, np.ones(6), "<f8") + packed(B_DIFF, np.ones(6))
    v = np.arange(6, dtype=np.float32)
    blob = junk + diff + blob_modern(v.reshape(2, 3)) + junk
    ip = f_len(L_IP, f_int(IP_NUM_OUTPUT, 2) + junk)
    (layer,) = caffe.parse_net(junk + net(layer_modern("x", "InnerProduct", [blob], extra=junk + ip)) + junk)
    assert layer.blobs[0].shape == (2, 3) and not layer.transpose
    np.testing.assert_array_equal(layer.blobs[0].data, v)


@pytest.mark.parametrize("bad, message", [
    (tag(5, 3) + tag(5, 4), "group"),
    (tag(5, 6), "unknown wire type 6"),
    (tag(5, 7), "unknown wire type 7"),
    (b"\x80" * 11, "longer than 10 bytes"),
    (tag(NET_LAYER, 0) + varint(1), "wire type 0"),
    (f_len(NET_V1_LAYERS, f_len(V1_V0, f_str(1, "conv1"))), "V0 format"),
    (f_len(NET_LAYER, f_len(L_BLOBS, packed(B_DATA, np.ones(3))[:-1] + b"")), "truncated"),
    (f_len(NET_LAYER, f_len(L_BLOBS, f_len(B_DATA, b"\x00" * 6))), "not a whole number"),
])
def test_malformed_bytes_are_wire_errors(bad, message):
    with pytest.raises(caffe.WireError, match=message):
        caffe.parse_net(bad)


def test_transposed_inner_product_is_stored_in_out():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)       # torch layout (out=2, in=3)
    data = net(layer_modern("ip", "InnerProduct", [blob_modern(w.T.copy())], extra=f_len(L_IP, f_int(IP_TRANSPOSE, 1))))
    (layer,) = caffe.parse_net(data)
    assert layer.transpose
    assert torch.equal(caffe.blob_tensors(layer)["ip.weight"], torch.from_numpy(w))


def test_v1_type_enums_read_as_modern_names():
    codes = {"c": V1_CONVOLUTION, "ip": V1_INNER_PRODUCT, "d": V1_DECONVOLUTION, "r": V1_RELU}
    layers = caffe.parse_net(net(*(layer_v1(name, code) for name, code in codes.items())))
    assert [(l.name, l.type) for l in layers] == [("c", "Convolution"), ("ip", "InnerProduct"),
                                                  ("d", "Deconvolution"), ("r", f"V1 type {V1_RELU}")]


def test_legacy_shapes_map_to_torch_shapes():
    (ip, conv) = caffe.parse_net(small_net())
    assert {k: tuple(t.shape) for k, t in caffe.blob_tensors(ip).items()} == {"ip.weight": (3, 4), "ip.bias": (3,)}
    assert tuple(caffe.blob_tensors(conv)["conv.weight"].shape) == (2, 1, 2, 2)
    bad = net(layer_v1("ip", V1_INNER_PRODUCT, [blob_legacy(np.ones(8, np.float32), (2, 1, 2, 2))]))
    with pytest.raises(GeneratorError, match=r"layer ip \(InnerProduct\): weight blob has legacy shape"):
        caffe.blob_tensors(caffe.parse_net(bad)[0])


def test_value_count_must_match_the_shape():
    data = one_blob_net(blob_modern(np.ones(5, np.float32), shape=(2, 3)))
    with pytest.raises(GeneratorError, match=r"layer x: weight blob holds 5 values, its shape \(2, 3\) needs 6"):
        caffe.blob_tensors(caffe.parse_net(data)[0])
    negative = one_blob_net(blob_modern(np.ones(2, np.float32), shape=(-1, -2)))
    with pytest.raises(GeneratorError, match=r"negative dimension: \(-1, -2\)"):
        caffe.blob_tensors(caffe.parse_net(negative)[0])


def test_unsupported_type_with_blobs_is_named():
    data = net(layer_modern("bn", "BatchNorm", [blob_modern(np.ones(3, np.float32))]))
    with pytest.raises(GeneratorError, match="layer bn: caffe type 'BatchNorm'"):
        caffe.blob_tensors(caffe.parse_net(data)[0])
