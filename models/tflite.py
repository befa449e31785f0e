"""A minimal, safe TFLite flatbuffer reader (only what the MediaPipe face models need).

A ``.tflite`` file is a FlatBuffer (schema ``tensorflow/lite/schema/schema.fbs``). This module parses it by hand
with bounds-checked reads; nothing in the file is executed. It exposes the first subgraph as a list of
:class:`TfliteOp` (builtin op name, input/output tensor indices, decoded options) plus a :class:`TfliteTensor` per
tensor (shape, dtype, name, constant data as numpy). Float16 constant buffers are returned as ``float16`` arrays;
the ``DEQUANTIZE`` ops that MediaPipe models use to widen them to float32 are kept in the op list (an interpreter can
fold them, see :func:`fold_dequantize`). Int8/uint8 affine-quantised constants are dequantised on request.

Field numbers below follow the public schema; a flatbuffer field ``i`` lives at vtable slot ``4 + 2 * i``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import CheckpointError

# TensorType enum -> numpy dtype (None: not supported by this reader).
TENSOR_TYPES: dict[int, tuple[str, Any]] = {
    0: ("FLOAT32", np.float32), 1: ("FLOAT16", np.float16), 2: ("INT32", np.int32), 3: ("UINT8", np.uint8),
    4: ("INT64", np.int64), 5: ("STRING", None), 6: ("BOOL", np.bool_), 7: ("INT16", np.int16),
    8: ("COMPLEX64", np.complex64), 9: ("INT8", np.int8), 10: ("FLOAT64", np.float64),
}

# BuiltinOperator enum values (subset; unknown codes keep the name "BUILTIN_<n>").
BUILTIN_OPS: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    5: "DEPTH_TO_SPACE", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 32: "CUSTOM",
    34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 42: "DIV", 43: "SQUEEZE", 45: "STRIDED_SLICE",
    49: "SPLIT", 53: "CAST", 54: "PRELU", 55: "MAXIMUM", 57: "MINIMUM", 60: "PADV2",
    97: "RESIZE_NEAREST_NEIGHBOR", 98: "LEAKY_RELU", 114: "QUANTIZE", 117: "HARD_SWISH",
}

PADDING = {0: "SAME", 1: "VALID"}
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


class _Reader:
    """Bounds-checked little-endian reads of FlatBuffer tables, vectors and strings over one ``bytes``."""

    def __init__(self, buf: bytes, source: str) -> None:
        self.buf = buf
        self.source = source

    def _need(self, pos: int, n: int) -> None:
        if pos < 0 or pos + n > len(self.buf):
            raise CheckpointError(f"{self.source}: truncated or corrupt TFLite flatbuffer (read at {pos}+{n})")

    def u8(self, pos: int) -> int:
        self._need(pos, 1)
        return self.buf[pos]

    def i32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<i", self.buf, pos)[0]

    def u32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<I", self.buf, pos)[0]

    def u64(self, pos: int) -> int:
        self._need(pos, 8)
        return struct.unpack_from("<Q", self.buf, pos)[0]

    def u16(self, pos: int) -> int:
        self._need(pos, 2)
        return struct.unpack_from("<H", self.buf, pos)[0]

    # --- tables --------------------------------------------------------------------------------------------
    def field_pos(self, table: int, fid: int) -> int | None:
        """Absolute position of field ``fid`` of the table at ``table``, or None when absent (default)."""
        vtable = table - self.i32(table)
        vt_size = self.u16(vtable)
        slot = 4 + 2 * fid
        if slot + 2 > vt_size:
            return None
        off = self.u16(vtable + slot)
        return table + off if off else None

    def scalar(self, table: int, fid: int, fmt: str, default: Any = 0) -> Any:
        pos = self.field_pos(table, fid)
        if pos is None:
            return default
        self._need(pos, struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.buf, pos)[0]

    def indirect(self, pos: int) -> int:
        return pos + self.u32(pos)

    def table(self, table: int, fid: int) -> int | None:
        pos = self.field_pos(table, fid)
        return None if pos is None else self.indirect(pos)

    def vector(self, table: int, fid: int) -> tuple[int, int] | None:
        """(start of elements, length) of a vector field, or None."""
        pos = self.field_pos(table, fid)
        if pos is None:
            return None
        vec = self.indirect(pos)
        return vec + 4, self.u32(vec)

    def scalar_vector(self, table: int, fid: int, dtype: Any) -> np.ndarray:
        v = self.vector(table, fid)
        dt = np.dtype(dtype).newbyteorder("<")
        if v is None:
            return np.zeros(0, dt)
        start, n = v
        self._need(start, n * dt.itemsize)
        return np.frombuffer(self.buf, dt, count=n, offset=start).copy()

    def table_vector(self, table: int, fid: int) -> list[int]:
        v = self.vector(table, fid)
        if v is None:
            return []
        start, n = v
        return [self.indirect(start + 4 * i) for i in range(n)]

    def string(self, table: int, fid: int) -> str:
        pos = self.field_pos(table, fid)
        if pos is None:
            return ""
        s = self.indirect(pos)
        n = self.u32(s)
        self._need(s + 4, n)
        return self.buf[s + 4:s + 4 + n].decode("utf-8", "replace")


@dataclass
class TfliteTensor:
    """One tensor of the graph. ``data`` holds constant contents (reshaped to ``shape``), else None."""

    index: int  # position in the subgraph's tensor list
    name: str  # tensor name from the converter
    shape: tuple[int, ...]  # static shape (TFLite layout, NHWC for images; OHWI / 1HWO for conv weights)
    dtype: str  # TensorType name, e.g. "FLOAT32", "FLOAT16"
    data: np.ndarray | None = None  # constant data in its stored dtype, or None for activations
    scale: np.ndarray | None = None  # affine quantisation scale(s), if any
    zero_point: np.ndarray | None = None  # affine quantisation zero point(s), if any
    quantized_dimension: int = 0  # axis the per-channel scale applies to

    def dequantized(self) -> np.ndarray:
        """Constant data as float32 (fp16 widened; int8/uint8 affine-dequantised). Raises for activations."""
        if self.data is None:
            raise CheckpointError(f"tensor {self.name!r} has no constant data")
        d = self.data
        if d.dtype in (np.int8, np.uint8, np.int16) and self.scale is not None and self.scale.size:
            shape = [1] * d.ndim
            if self.scale.size > 1:
                shape[self.quantized_dimension] = -1
            s = self.scale.reshape(shape).astype(np.float32)
            zp = (self.zero_point if self.zero_point is not None and self.zero_point.size else np.zeros(1))
            return ((d.astype(np.float32) - zp.reshape(shape if zp.size > 1 else [1] * d.ndim)) * s)
        return d.astype(np.float32)


@dataclass
class TfliteOp:
    """One operator: builtin name, tensor indices (-1 = optional input absent) and decoded options."""

    name: str  # BuiltinOperator name, e.g. "CONV_2D"; custom ops: "CUSTOM:<code>"
    inputs: list[int]  # tensor indices
    outputs: list[int]  # tensor indices
    options: dict[str, Any] = field(default_factory=dict)  # decoded builtin options (see _decode_options)


@dataclass
class TfliteGraph:
    """The first subgraph of a .tflite model."""

    tensors: list[TfliteTensor]  # every tensor, indexed by TfliteTensor.index
    ops: list[TfliteOp]  # operators in execution order
    inputs: list[int]  # graph input tensor indices
    outputs: list[int]  # graph output tensor indices
    version: int = 3  # schema version from the Model table

    def const(self, idx: int) -> np.ndarray:
        """Constant tensor ``idx`` as float32, following a DEQUANTIZE producer when the tensor is computed."""
        t = self.tensors[idx]
        if t.data is not None:
            return t.dequantized()
        for op in self.ops:
            if op.name == "DEQUANTIZE" and op.outputs[0] == idx:
                return self.const(op.inputs[0])
        raise CheckpointError(f"tensor {t.name!r} ({idx}) is not a constant")

    def is_const(self, idx: int) -> bool:
        """True for stored constants and DEQUANTIZE outputs of stored constants."""
        if idx < 0:
            return False
        if self.tensors[idx].data is not None:
            return True
        return any(op.name == "DEQUANTIZE" and op.outputs[0] == idx and self.is_const(op.inputs[0])
                   for op in self.ops)


def _decode_options(r: _Reader, name: str, opt: int | None) -> dict[str, Any]:
    """Builtin options of the ops we interpret; others are left empty (the interpreter refuses them)."""
    if opt is None:
        return {}
    if name == "CONV_2D":
        return {"padding": PADDING.get(r.scalar(opt, 0, "b"), "?"), "stride_w": r.scalar(opt, 1, "i"),
                "stride_h": r.scalar(opt, 2, "i"), "activation": ACTIVATIONS.get(r.scalar(opt, 3, "b"), "?"),
                "dilation_w": r.scalar(opt, 4, "i", 1), "dilation_h": r.scalar(opt, 5, "i", 1)}
    if name == "DEPTHWISE_CONV_2D":
        return {"padding": PADDING.get(r.scalar(opt, 0, "b"), "?"), "stride_w": r.scalar(opt, 1, "i"),
                "stride_h": r.scalar(opt, 2, "i"), "depth_multiplier": r.scalar(opt, 3, "i"),
                "activation": ACTIVATIONS.get(r.scalar(opt, 4, "b"), "?"),
                "dilation_w": r.scalar(opt, 5, "i", 1), "dilation_h": r.scalar(opt, 6, "i", 1)}
    if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return {"padding": PADDING.get(r.scalar(opt, 0, "b"), "?"), "stride_w": r.scalar(opt, 1, "i"),
                "stride_h": r.scalar(opt, 2, "i"), "filter_w": r.scalar(opt, 3, "i"),
                "filter_h": r.scalar(opt, 4, "i"), "activation": ACTIVATIONS.get(r.scalar(opt, 5, "b"), "?")}
    if name == "CONCATENATION":
        return {"axis": r.scalar(opt, 0, "i"), "activation": ACTIVATIONS.get(r.scalar(opt, 1, "b"), "?")}
    if name in ("ADD", "MUL", "SUB", "DIV"):
        return {"activation": ACTIVATIONS.get(r.scalar(opt, 0, "b"), "?")}
    if name == "FULLY_CONNECTED":
        return {"activation": ACTIVATIONS.get(r.scalar(opt, 0, "b"), "?"), "weights_format": r.scalar(opt, 1, "b"),
                "keep_num_dims": bool(r.scalar(opt, 2, "b"))}
    if name == "RESHAPE":
        return {"new_shape": [int(x) for x in r.scalar_vector(opt, 0, np.int32)]}
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        fa, fh = (2, 3) if name == "RESIZE_BILINEAR" else (0, 1)
        return {"align_corners": bool(r.scalar(opt, fa, "b")), "half_pixel_centers": bool(r.scalar(opt, fh, "b"))}
    if name == "SOFTMAX":
        return {"beta": r.scalar(opt, 0, "f", 0.0)}
    if name == "LEAKY_RELU":
        return {"alpha": r.scalar(opt, 0, "f", 0.0)}
    return {}


def parse_tflite(buf: bytes, source: str = "model.tflite") -> TfliteGraph:
    """Parse a TFLite flatbuffer (bytes) into a :class:`TfliteGraph` of its first subgraph."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CheckpointError(f"{source}: not a TFLite model (missing 'TFL3' file identifier)")
    r = _Reader(buf, source)
    model = r.indirect(0)
    version = r.scalar(model, 0, "I")
    codes: list[str] = []
    for oc in r.table_vector(model, 1):
        code = max(r.scalar(oc, 0, "b"), r.scalar(oc, 3, "i"))  # deprecated byte code vs int32 code
        name = BUILTIN_OPS.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            name = "CUSTOM:" + r.string(oc, 1)
        codes.append(name)
    buffers: list[np.ndarray | None] = []
    for b in r.table_vector(model, 4):
        v = r.vector(b, 0)
        if v is not None and v[1] > 0:
            r._need(v[0], v[1])
            buffers.append(np.frombuffer(buf, np.uint8, count=v[1], offset=v[0]))
            continue
        off, size = r.scalar(b, 1, "Q"), r.scalar(b, 2, "Q")  # large-model layout: data outside the flatbuffer
        if off > 1 and size > 0:
            r._need(off, size)
            buffers.append(np.frombuffer(buf, np.uint8, count=size, offset=off))
        else:
            buffers.append(None)
    subgraphs = r.table_vector(model, 2)
    if not subgraphs:
        raise CheckpointError(f"{source}: TFLite model has no subgraph")
    sg = subgraphs[0]
    tensors: list[TfliteTensor] = []
    for i, t in enumerate(r.table_vector(sg, 0)):
        shape = tuple(int(x) for x in r.scalar_vector(t, 0, np.int32))
        ttype = r.scalar(t, 1, "b")
        tname, npdt = TENSOR_TYPES.get(ttype, (f"TYPE_{ttype}", None))
        bidx = r.scalar(t, 2, "I")
        tt = TfliteTensor(index=i, name=r.string(t, 3), shape=shape, dtype=tname)
        raw = buffers[bidx] if 0 <= bidx < len(buffers) else None
        if raw is not None:
            if npdt is None:
                raise CheckpointError(f"{source}: constant tensor {tt.name!r} has unsupported type {tname}")
            arr = np.frombuffer(raw.tobytes(), np.dtype(npdt).newbyteorder("<"))
            n = int(np.prod(shape)) if shape else 1
            if arr.size != n:
                raise CheckpointError(f"{source}: tensor {tt.name!r} has {arr.size} values, shape {shape} needs {n}")
            tt.data = arr.reshape(shape).astype(np.dtype(npdt))
        q = r.table(t, 4)
        if q is not None:
            tt.scale = r.scalar_vector(q, 2, np.float32)
            tt.zero_point = r.scalar_vector(q, 3, np.int64)
            tt.quantized_dimension = r.scalar(q, 6, "i")
        tensors.append(tt)
    ops: list[TfliteOp] = []
    for o in r.table_vector(sg, 3):
        ci = r.scalar(o, 0, "I")
        if ci >= len(codes):
            raise CheckpointError(f"{source}: operator code index {ci} out of range")
        name = codes[ci]
        ins = [int(x) for x in r.scalar_vector(o, 1, np.int32)]
        outs = [int(x) for x in r.scalar_vector(o, 2, np.int32)]
        for x in ins + outs:
            if x >= len(tensors):
                raise CheckpointError(f"{source}: {name} refers to tensor {x} of {len(tensors)}")
        ops.append(TfliteOp(name, ins, outs, _decode_options(r, name, r.table(o, 4))))
    g_in = [int(x) for x in r.scalar_vector(sg, 1, np.int32)]
    g_out = [int(x) for x in r.scalar_vector(sg, 2, np.int32)]
    return TfliteGraph(tensors=tensors, ops=ops, inputs=g_in, outputs=g_out, version=version)


def read_tflite_file(path: str | Path) -> TfliteGraph:
    """Read and parse a ``.tflite`` file; a missing or malformed file raises :class:`CheckpointError`."""
    p = Path(path)
    try:
        buf = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {e.strerror or e}") from None
    return parse_tflite(buf, p.name)


def fold_dequantize(graph: TfliteGraph) -> TfliteGraph:
    """Drop DEQUANTIZE ops of constants: their outputs become float32 constants. Returns a new graph."""
    tensors = [TfliteTensor(**vars(t)) for t in graph.tensors]
    ops: list[TfliteOp] = []
    for op in graph.ops:
        if op.name == "DEQUANTIZE" and tensors[op.inputs[0]].data is not None:
            tensors[op.outputs[0]].data = tensors[op.inputs[0]].dequantized()
            tensors[op.outputs[0]].dtype = "FLOAT32"
        else:
            ops.append(op)
    return TfliteGraph(tensors=tensors, ops=ops, inputs=list(graph.inputs), outputs=list(graph.outputs),
                       version=graph.version)
