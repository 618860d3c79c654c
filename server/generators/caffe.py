"""Convert an original DeePSiM Caffe release (generator.caffemodel) to a torch
state dict, with neither Caffe nor the protobuf package installed.

A .caffemodel is one binary caffe.NetParameter.  Only what the weights need
is read (each layer's name, type and blobs); every other field is skipped by
its wire type.  The prototxt is not needed: the caffemodel names and types its
layers itself.

Field numbers, from BVLC/caffe src/caffe/proto/caffe.proto (proto2):

    NetParameter           layer = 100 (LayerParameter)
                           layers = 2 (V1LayerParameter, the legacy format)
    LayerParameter         name = 1, type = 2 (string), blobs = 7,
                           inner_product_param = 117
    V1LayerParameter       name = 4, type = 5 (enum LayerType), blobs = 6,
                           inner_product_param = 17, layer = 1 (V0, unsupported)
    V1 LayerType           CONVOLUTION = 4, INNER_PRODUCT = 14, DECONVOLUTION = 39
    InnerProductParameter  transpose = 6 (bool)
    BlobProto              num = 1, channels = 2, height = 3, width = 4 (legacy
                           4-D shape), data = 5 (float), diff = 6 (float),
                           shape = 7 (BlobShape), double_data = 8 (double),
                           double_diff = 9 (double); repeated reals [packed]
    BlobShape              dim = 1 (int64, packed)

Layouts: caffe's InnerProduct weight is (out, in) like torch Linear (or
(in, out) with transpose: true); Deconvolution is (in, out, kh, kw) like
ConvTranspose2d; Convolution is (out, in, kh, kw) like Conv2d.  So blobs map
to `<name>.weight` (blob 0) and `<name>.bias` (blob 1) without reordering.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xdream.errors import GeneratorError
from xdream.files import sha256_file, write_atomic

log = logging.getLogger(__name__)

# protobuf wire types
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

NET_LAYER, NET_LAYERS_V1 = 100, 2
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
SHAPE_DIM = 1
IP_TRANSPOSE = 6
V1_V0_LAYER = 1
V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}

WEIGHTED = ("InnerProduct", "Convolution", "Deconvolution")


@dataclass(frozen=True)
class _LayerFields:
    name: int
    type: int
    blobs: int
    ip_param: int
    v1: bool


MODERN = _LayerFields(name=1, type=2, blobs=7, ip_param=117, v1=False)
LEGACY = _LayerFields(name=4, type=5, blobs=6, ip_param=17, v1=True)


class WireError(ValueError):
    """Malformed protobuf; read_caffemodel turns it into a GeneratorError naming the file."""


@dataclass
class CaffeBlob:
    shape: tuple[int, ...] | None       # BlobShape dims, when given
    legacy: tuple[int, ...] | None      # (num, channels, height, width), when any is given
    data: np.ndarray                    # flat values, float32 or float64


@dataclass
class CaffeLayer:
    name: str
    type: str                           # modern type names; V1 enums are mapped to them
    blobs: list[CaffeBlob] = field(default_factory=list)
    transpose: bool = False             # InnerProduct weight stored as (in, out)


# --- the wire format -------------------------------------------------------

class _Reader:
    """A cursor over one message, buf[pos:end]; offsets stay absolute so errors
    name the byte in the file."""

    def __init__(self, buf: memoryview, pos: int = 0, end: int | None = None):
        self.buf, self.pos = buf, pos
        self.end = len(buf) if end is None else end

    def done(self) -> bool:
        return self.pos >= self.end

    def varint(self) -> int:
        result, shift, pos = 0, 0, self.pos
        for _ in range(10):
            if pos >= self.end:
                raise WireError(f"truncated: a varint at byte {self.pos} runs past byte {self.end}")
            b = self.buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return result
            shift += 7
        raise WireError(f"varint longer than 10 bytes at byte {self.pos}")

    def key(self) -> tuple[int, int]:
        at = self.pos
        key = self.varint()
        number, wire = key >> 3, key & 7
        if wire in (SGROUP, EGROUP):
            raise WireError(f"group (wire type {wire}) at byte {at}: caffe.proto has no groups")
        if wire not in (VARINT, I64, LEN, I32):
            raise WireError(f"unknown wire type {wire} at byte {at}")
        if number == 0:
            raise WireError(f"field number 0 at byte {at}")
        return number, wire

    def take(self, n: int) -> int:
        """Advance n bytes; return where they start."""
        if n > self.end - self.pos:
            raise WireError(f"truncated: {n} bytes needed at byte {self.pos}, "
                            f"{self.end - self.pos} left in the enclosing message")
        start = self.pos
        self.pos += n
        return start

    def sub(self) -> _Reader:
        n = self.varint()
        start = self.take(n)
        return _Reader(self.buf, start, start + n)

    def raw(self) -> memoryview:
        n = self.varint()
        start = self.take(n)
        return self.buf[start:start + n]

    def skip(self, wire: int) -> None:
        if wire == VARINT:
            self.varint()
        elif wire == I64:
            self.take(8)
        elif wire == I32:
            self.take(4)
        else:
            self.take(self.varint())


def _signed(v: int) -> int:
    # int32/int64 negatives are sign-extended to 64 bits on the wire
    return v - (1 << 64) if v >= 1 << 63 else v


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _expect(number: int, wire: int, allowed: tuple[int, ...], what: str, at: int) -> None:
    if wire not in allowed:
        raise WireError(f"{what} (field {number}) has wire type {wire} at byte {at}, expected one of {allowed}")


def _read_reals(r: _Reader, number: int, wire: int, dtype: str) -> np.ndarray:
    """A packed chunk, or a run of unpacked elements, of a repeated float/double."""
    size = np.dtype(dtype).itemsize
    if wire == LEN:
        chunk = r.raw()
        if len(chunk) % size:
            raise WireError(f"packed field {number} of {len(chunk)} bytes is not a whole number of {dtype}")
        return np.frombuffer(chunk, dtype)
    fixed = I32 if size == 4 else I64
    _expect(number, wire, (LEN, fixed), "a repeated real", r.pos)
    return _unpacked_run(r, _encode_varint(number << 3 | wire), dtype)


def _unpacked_run(r: _Reader, tag: bytes, dtype: str) -> np.ndarray:
    """Unpacked reals are (tag, value) records back to back: read the whole run
    with numpy, in growing chunks, instead of one Python step per value (56 M
    values in an fc6 generator)."""
    size = np.dtype(dtype).itemsize
    pieces = [np.frombuffer(r.buf, np.uint8, size, r.take(size))]   # the first tag is already read
    rec, want, chunk = len(tag) + size, np.frombuffer(tag, np.uint8), 1024
    while True:
        n = min(chunk, (r.end - r.pos) // rec)
        if n == 0:
            break
        records = np.frombuffer(r.buf, np.uint8, n * rec, r.pos).reshape(n, rec)
        is_tag = (records[:, :len(tag)] == want).all(axis=1)
        k = n if is_tag.all() else int(np.argmin(is_tag))
        pieces.append(records[:k, len(tag):].reshape(-1))
        r.pos += k * rec
        if k < n:
            break
        chunk = min(chunk * 4, 1 << 22)
    return np.concatenate(pieces).view(dtype)


# --- caffe messages --------------------------------------------------------

def _read_shape(r: _Reader) -> tuple[int, ...]:
    dims = []
    while not r.done():
        number, wire = r.key()
        if number == SHAPE_DIM and wire == LEN:      # packed
            packed = r.sub()
            while not packed.done():
                dims.append(_signed(packed.varint()))
        elif number == SHAPE_DIM:
            _expect(number, wire, (VARINT,), "BlobShape.dim", r.pos)
            dims.append(_signed(r.varint()))
        else:
            r.skip(wire)
    return tuple(dims)


def _read_blob(r: _Reader) -> CaffeBlob:
    shape, legacy = None, None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    while not r.done():
        at = r.pos
        number, wire = r.key()
        if number == BLOB_SHAPE:
            _expect(number, wire, (LEN,), "BlobProto.shape", at)
            shape = _read_shape(r.sub())
        elif number in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH):
            _expect(number, wire, (VARINT,), "BlobProto num/channels/height/width", at)
            legacy = legacy or [0, 0, 0, 0]   # caffe: any of the four present means a 4-D legacy shape
            legacy[number - 1] = _signed(r.varint())
        elif number == BLOB_DATA:
            floats.append(_read_reals(r, number, wire, "<f4"))
        elif number == BLOB_DOUBLE_DATA:
            doubles.append(_read_reals(r, number, wire, "<f8"))
        elif number == BLOB_DIFF:                    # gradients: read fast, then dropped
            _read_reals(r, number, wire, "<f4")
        elif number == BLOB_DOUBLE_DIFF:
            _read_reals(r, number, wire, "<f8")
        else:
            r.skip(wire)
    if floats and doubles:
        raise WireError(f"a blob ending at byte {r.end} holds both float and double data")
    parts = floats or doubles
    data = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.zeros(0, np.float32)
    return CaffeBlob(shape, tuple(legacy) if legacy else None, data)


def _read_transpose(r: _Reader) -> bool:
    transpose = False
    while not r.done():
        number, wire = r.key()
        if number == IP_TRANSPOSE and wire == VARINT:
            transpose = bool(r.varint())
        else:
            r.skip(wire)
    return transpose


def _read_layer(r: _Reader, f: _LayerFields) -> CaffeLayer:
    start = r.pos
    layer = CaffeLayer(name="", type="")
    while not r.done():
        at = r.pos
        number, wire = r.key()
        if number == f.name:
            _expect(number, wire, (LEN,), "layer name", at)
            layer.name = bytes(r.raw()).decode("utf-8", errors="replace")
        elif number == f.type and f.v1:
            _expect(number, wire, (VARINT,), "V1 layer type", at)
            code = r.varint()
            layer.type = V1_TYPES.get(code, f"V1 type {code}")
        elif number == f.type:
            _expect(number, wire, (LEN,), "layer type", at)
            layer.type = bytes(r.raw()).decode("utf-8", errors="replace")
        elif number == f.blobs:
            _expect(number, wire, (LEN,), "layer blobs", at)
            layer.blobs.append(_read_blob(r.sub()))
        elif number == f.ip_param:
            _expect(number, wire, (LEN,), "inner_product_param", at)
            layer.transpose = _read_transpose(r.sub())
        elif f.v1 and number == V1_V0_LAYER:
            raise WireError(f"layer at byte {start} is in the V0 format (before 2014), not supported: "
                            "upgrade it with caffe's upgrade_net_proto_binary")
        else:
            r.skip(wire)
    return layer


def parse_net(data: bytes) -> list[CaffeLayer]:
    """The layers of a binary caffe NetParameter, modern and legacy (V1) alike,
    in file order.  Raises WireError on malformed bytes."""
    r = _Reader(memoryview(data))
    layers = []
    while not r.done():
        at = r.pos
        number, wire = r.key()
        if number in (NET_LAYER, NET_LAYERS_V1):
            _expect(number, wire, (LEN,), "NetParameter layer", at)
            layers.append(_read_layer(r.sub(), MODERN if number == NET_LAYER else LEGACY))
        else:
            r.skip(wire)
    return layers


def _looks_like_text(data: bytes) -> bool:
    head = data[:256]
    return bool(head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head)


def read_caffemodel(path: Path) -> list[CaffeLayer]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeneratorError(f"cannot read caffemodel {path}: {exc.strerror}") from None
    hint = " (it looks like text: a .prototxt? the weights are in the binary .caffemodel)" \
        if _looks_like_text(data) else ""
    try:
        layers = parse_net(data)
    except WireError as exc:
        raise GeneratorError(f"{path} is not a readable caffemodel (binary caffe NetParameter): "
                             f"{exc}{hint}") from None
    if not layers:
        raise GeneratorError(f"{path} holds no caffe layers: not a caffemodel{hint}")
    return layers


# --- blobs to tensors ------------------------------------------------------

def _torch_shape(layer: CaffeLayer, role: str, blob: CaffeBlob) -> tuple[int, ...]:
    """The blob's shape in torch's terms.  Like caffe's Blob::FromProto, the
    legacy 4-D shape wins when present; it pads with leading 1s
    (InnerProduct weight (1, 1, out, in), any bias (1, 1, 1, n))."""
    if blob.legacy is None:
        if blob.shape is None:
            raise GeneratorError(f"layer {layer.name}: its {role} blob has no shape")
        return blob.shape
    n, c, h, w = blob.legacy
    if role == "bias" and (n, c, h) == (1, 1, 1):
        return (w,)
    if role == "weight" and layer.type == "InnerProduct" and (n, c) == (1, 1):
        return (h, w)
    if role == "weight" and layer.type != "InnerProduct":
        return (n, c, h, w)
    raise GeneratorError(f"layer {layer.name} ({layer.type}): {role} blob has legacy shape "
                         f"num/channels/height/width {blob.legacy}, which fits no {role} of that type")


def blob_tensors(layer: CaffeLayer) -> dict[str, torch.Tensor]:
    """`<name>.weight` (blob 0) and `<name>.bias` (blob 1) as float32 tensors."""
    if layer.type not in WEIGHTED:
        raise GeneratorError(f"layer {layer.name}: caffe type {layer.type!r} is not one this converter "
                             f"maps (only {', '.join(WEIGHTED)})")
    if len(layer.blobs) > 2:
        raise GeneratorError(f"layer {layer.name}: {len(layer.blobs)} blobs, expected weight and bias")
    out = {}
    for role, blob in zip(("weight", "bias"), layer.blobs):
        shape = _torch_shape(layer, role, blob)
        if any(d < 0 for d in shape):
            raise GeneratorError(f"layer {layer.name}: {role} blob has a negative dimension: {shape}")
        if blob.data.size != math.prod(shape):
            raise GeneratorError(f"layer {layer.name}: {role} blob holds {blob.data.size} values, "
                                 f"its shape {shape} needs {math.prod(shape)}")
        values = blob.data.reshape(shape)
        if role == "weight" and layer.transpose:   # caffe's transpose: true stores (in, out)
            values = values.T
        # a fresh writable float32 copy: the file's bytes are read-only, may be float64
        out[f"{layer.name}.{role}"] = torch.from_numpy(np.array(values, dtype=np.float32, order="C"))
    return out


def expected_shapes(layer: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the DeePSiM generator for `layer`, built on the meta
    device so that no weights are allocated."""
    from server.generators.deepsim import ARCHITECTURES

    if layer not in ARCHITECTURES:
        raise GeneratorError(f"unknown DeePSiM generator {layer!r}; known: {sorted(ARCHITECTURES)}")
    with torch.device("meta"):
        net = ARCHITECTURES[layer]()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _split_extras(path: Path, layers: list[CaffeLayer], modules: set[str]) -> list[CaffeLayer]:
    """The layers with blobs that the generator has; error on any other with
    values, log the empty ones (harmless)."""
    seen, ours, extra, empty = set(), [], [], []
    for cl in layers:
        if not cl.blobs:
            continue
        if cl.name in seen:
            raise GeneratorError(f"{path}: layer {cl.name!r} holds blobs twice")
        seen.add(cl.name)
        if cl.name in modules:
            ours.append(cl)
        elif all(b.data.size == 0 for b in cl.blobs):
            empty.append(cl.name)
        else:
            extra.append(f"{cl.name} ({cl.type})")
    if extra:
        raise GeneratorError(f"{path}: layers with weights that this DeePSiM generator does not have: "
                             f"{', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''} "
                             "(wrong --layer, or not a generator caffemodel?)")
    if empty:
        log.info("%s: ignoring layers with empty blobs: %s", path, ", ".join(empty))
    return ours


def caffe_to_state_dict(path: Path, layer: str) -> dict[str, torch.Tensor]:
    """The DeePSiM generator for `layer` from a caffemodel, as a state dict in
    the architecture's key order; every key and shape checked."""
    path = Path(path)
    expected = expected_shapes(layer)
    modules = {k.rsplit(".", 1)[0] for k in expected}
    state = {}
    for cl in _split_extras(path, read_caffemodel(path), modules):
        for key, tensor in blob_tensors(cl).items():
            if key not in expected:
                raise GeneratorError(f"{path}: layer {cl.name} has a blob {key} that the DeePSiM {layer} "
                                     "generator does not have")
            if tuple(tensor.shape) != expected[key]:
                raise GeneratorError(f"{path}: layer {cl.name}: {key} has shape {tuple(tensor.shape)}, "
                                     f"the DeePSiM {layer} generator expects {expected[key]}")
            state[key] = tensor
    missing = [k for k in expected if k not in state]
    if missing:
        raise GeneratorError(f"{path}: {len(missing)} tensors of the DeePSiM {layer} generator are missing "
                             f"from the caffemodel: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    log.info("converted %s: %d tensors for DeePSiM %s", path, len(state), layer)
    return {k: state[k] for k in expected}


# --- the CLI ---------------------------------------------------------------

def save_state_dict(state: dict[str, torch.Tensor], out: Path) -> str:
    """Write atomically (xdream.files.write_atomic), so a failed write never leaves
    a half file under the final name; return the file's SHA-256."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda f: torch.save(state, f))
        return sha256_file(out)
    except OSError as exc:
        raise GeneratorError(f"cannot write {out}: {exc.strerror or exc}") from None
