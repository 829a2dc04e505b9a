"""Run an ONNX graph in torch, so that a judge's frozen ONNX model (RapidOCR's recogniser) has gradients.

onnxruntime computes the judge's readings but cannot differentiate them; reward backpropagation needs the
same function in torch. `OnnxGraph` walks the graph's nodes in order with torch ops: no conversion step, no
copy of the weights on disk (they stay in the package that ships the model). Only the operators that the
models we use contain are implemented, each as the ONNX specification defines it (opset 12/13 forms);
anything else is refused when the graph loads, naming the operator, not mid-forward.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _ints(value) -> list[int]:
    return [int(v) for v in (value.tolist() if torch.is_tensor(value) else value)]


def _conv(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return F.conv2d(x, w, b, stride=tuple(strides), padding=(top, left), dilation=tuple(dilations), groups=group)


def _average_pool(x, *, kernel_shape, strides=None, pads=(0, 0, 0, 0), ceil_mode=0, count_include_pad=0, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise NotImplementedError("AveragePool with asymmetric padding")
    return F.avg_pool2d(x, tuple(kernel_shape), tuple(strides or kernel_shape), (top, left), bool(ceil_mode),
                        bool(count_include_pad))


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1:
            raise NotImplementedError("Slice with a step other than 1")
        size = x.shape[axis]
        index[axis] = slice(max(-size, min(start, size)), max(-size - 1, min(end, size)))
    return x[tuple(index)]


def _reshape(x, shape):
    shape = _ints(shape)
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _squeeze(x, axes=None, *, axes_attr=None):
    dims = _ints(axes) if axes is not None else axes_attr
    return x.squeeze(tuple(dims)) if dims is not None else x.squeeze()


_CASTS = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}

# name -> f(inputs, attributes); inputs are tensors (None where an optional input is left empty)
_OPS = {
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "Pow": lambda i, a: i[0] ** i[1],
    "Sqrt": lambda i, a: torch.sqrt(i[0]),
    "Relu": lambda i, a: F.relu(i[0]),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
    "Clip": lambda i, a: torch.clamp(i[0], *(i[1:] + [None, None])[:2]),  # min, max: optional inputs
    "MatMul": lambda i, a: torch.matmul(i[0], i[1]),
    "Softmax": lambda i, a: torch.softmax(i[0], dim=a.get("axis", -1)),
    "Transpose": lambda i, a: i[0].permute(a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].dim()))),
    "Concat": lambda i, a: torch.cat(i, dim=a["axis"]),
    "ReduceMean": lambda i, a: i[0].mean(dim=a["axes"], keepdim=bool(a.get("keepdims", 1))),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "AveragePool": lambda i, a: _average_pool(i[0], **a),
    "Conv": lambda i, a: _conv(*i, **a),
    "BatchNormalization": lambda i, a: F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5)),
    "Shape": lambda i, a: torch.tensor(i[0].shape, dtype=torch.int64),
    "Cast": lambda i, a: i[0].to(_CASTS[a["to"]]),
    "Slice": lambda i, a: _slice(*i),
    "Reshape": lambda i, a: _reshape(i[0], i[1]),
    "Squeeze": lambda i, a: _squeeze(*i, axes_attr=a.get("axes")),
}


class OnnxGraph(nn.Module):
    """A frozen ONNX model as a torch module: `forward(x)` returns the graph's first output.

    The weights (initializers and Constant nodes) become buffers; gradients flow to the input only."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load(os.fspath(path))
        graph = model.graph
        self.metadata = {p.key: p.value for p in model.metadata_props}
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in _OPS and n.op_type != "Constant"})
        if unsupported:
            raise NotImplementedError(f"{path}: ONNX operators not implemented in OnnxGraph: {', '.join(unsupported)}")
        self._names: dict[str, str] = {}  # ONNX value name -> buffer name
        for init in graph.initializer:
            self._constant(init.name, numpy_helper.to_array(init))
        self._nodes: list[tuple[str, list[str], list[str], dict]] = []
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                self._constant(node.output[0], numpy_helper.to_array(attrs["value"]))
                continue
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            self._nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        self._input = graph.input[0].name
        self._output = graph.output[0].name
        self.requires_grad_(False)

    def _constant(self, name: str, value: np.ndarray) -> None:
        buffer = f"c{len(self._names)}"
        self.register_buffer(buffer, torch.from_numpy(np.array(value)), persistent=False)
        self._names[name] = buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor | None] = {name: getattr(self, buf) for name, buf in self._names.items()}
        values[""] = None
        values[self._input] = x
        for op, inputs, outputs, attrs in self._nodes:
            result = _OPS[op]([values[name] for name in inputs], attrs)
            values[outputs[0]] = result
        return values[self._output]
