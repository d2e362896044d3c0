"""model.summary(): Keras' table of layers, output shapes and parameter counts."""
from __future__ import annotations

from .layers.base import shape_str

__all__ = ["print_summary"]


def _wrap(text, width):
    """The cell's lines: its own line breaks first, then cut to the column width."""
    lines = []
    for part in str(text).split("\n"):
        if width <= 1:
            lines.append(part)
        else:
            lines += [part[i:i + width - 1] for i in range(0, max(len(part), 1), width - 1)] or [""]
    return lines


def _shape_cell(shape):
    """One shape, or a layer's several output shapes (return_state) one per line, as Keras lists them."""
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return "[" + ",\n ".join(shape_str(s) for s in shape) + "]"
    return shape_str(shape)


def _row(fields, positions):
    cols, start = [], 0
    for f, end in zip(fields, positions):
        cols.append(_wrap(f, end - start))
        start = end
    lines = []
    for k in range(max(len(c) for c in cols)):
        line, start = "", 0
        for c, end in zip(cols, positions):
            cell = " " + (c[k] if k < len(c) else "")
            line += cell[:end - start].ljust(end - start)
            start = end
        lines.append(line.rstrip())
    return lines


def _fmt_bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0


def print_summary(model, line_length=None, positions=None, print_fn=None):
    if not model.built:
        raise ValueError(f'model "{model.name}" has not been built yet: give the first layer '
                         "input_shape=(...), call model.build(input_shape), or fit/predict once")
    print_fn = print_fn or print
    line_length = int(line_length or 80)
    positions = positions or [0.45, 0.80, 1.0]
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]
    out = [f'Model: "{model.name}"', "_" * line_length]
    out += _row(["Layer (type)", "Output Shape", "Param #"], positions)
    out.append("=" * line_length)
    layers = model.layers
    for i, layer in enumerate(layers):
        shape = layer.output_shape_built
        params = layer.count_params() if layer.built else 0
        out += _row([f"{layer.name} ({type(layer).__name__})", _shape_cell(shape), f"{params:,}"], positions)
        if i != len(layers) - 1:
            out.append("")
    out.append("=" * line_length)
    trainable = sum(w.size for w in model.trainable_weights)
    total = sum(w.size for w in model.weights)
    nbytes = sum(w.data.nbytes for w in model.weights)
    tbytes = sum(w.data.nbytes for w in model.trainable_weights)
    out.append(f"Total params: {total:,} ({_fmt_bytes(nbytes)})")
    out.append(f"Trainable params: {trainable:,} ({_fmt_bytes(tbytes)})")
    out.append(f"Non-trainable params: {total - trainable:,} ({_fmt_bytes(nbytes - tbytes)})")
    out.append("_" * line_length)
    for line in out:
        print_fn(line)
