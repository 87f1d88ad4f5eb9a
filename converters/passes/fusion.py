"""Graph rewrites before quantization that let onnxruntime pick its faster int8 kernels.

Each rewrite is exact (same float semantics) and only fires on a pattern it fully recognises;
anything else is left as it is. The validation step compares the built model with the original
in any case.

* ``global_pool``: ``ReduceMean`` over every spatial axis of a conv feature map (N-C-spatial)
  becomes ``GlobalAveragePool`` (+ ``Squeeze`` when the mean dropped the axes). PyTorch exports
  ``AdaptiveAvgPool2d(1)`` / ``x.mean((2, 3))`` as ReduceMean, which onnxruntime runs in float
  between a DequantizeLinear and a QuantizeLinear and behind a transpose back to NCHW;
  GlobalAveragePool in a QDQ graph becomes ``QLinearGlobalAveragePool``, which stays
  channels-last after the int8 convolutions.
* ``attention``: the multi-head self-attention block that PyTorch code writes by hand or with
  ``scaled_dot_product_attention`` — one QKV projection split in three (or three projections of
  the same input), reshaped to heads, ``softmax(Q Kᵀ · scale) V``, heads merged back — becomes
  onnxruntime's ``com.microsoft.Attention``. About twenty small nodes per block become one, and
  dynamic int8 turns it into ``QAttention`` (int8 QKV weights, float softmax). Blocks with an
  attention mask or bias (anything between the scores and the Softmax other than a scalar
  scale) are not fused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass

MS_DOMAIN = "com.microsoft"


@dataclass
class _Graph:
    """Index of one ONNX graph: producers, consumers, constants, ranks."""

    graph: object
    producer: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)
    inits: dict = field(default_factory=dict)
    ranks: dict = field(default_factory=dict)
    outputs: set = field(default_factory=set)

    nodes: list = field(default_factory=list)

    @classmethod
    def of(cls, graph) -> "_Graph":
        # One list of the node wrappers, kept alive here, so that id() identifies a node.
        g = cls(graph, nodes=list(graph.node))
        for node in g.nodes:
            for o in node.output:
                g.producer[o] = node
            for i in node.input:
                g.consumers.setdefault(i, []).append(node)
        g.inits = {i.name: i for i in graph.initializer}
        for v in list(graph.value_info) + list(graph.input) + list(graph.output):
            t = v.type.tensor_type
            if t.HasField("shape"):
                g.ranks[v.name] = len(t.shape.dim)
        g.outputs = {o.name for o in graph.output}
        return g

    def const(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def scalar(self, name: str) -> float | None:
        c = self.const(name)
        return float(c.reshape(())) if c is not None and c.size == 1 and c.dtype.kind == "f" else None

    def single_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None

    def made_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _perm(node) -> list[int]:
    return [int(p) for p in (_attr(node, "perm") or [])]


def _axes(g: _Graph, node) -> list[int] | None:
    """ReduceMean axes from the attribute (opset < 18) or the second input (opset >= 18)."""
    if len(node.input) > 1 and node.input[1]:
        c = g.const(node.input[1])
        return None if c is None else [int(a) for a in np.atleast_1d(c)]
    axes = _attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


# --- ReduceMean -> GlobalAveragePool ---------------------------------------------------------

def rewrite_global_pool(model) -> int:
    """ReduceMean over all spatial axes (rank >= 3, axes 2..rank-1) -> GlobalAveragePool. Returns the count."""
    from onnx import helper

    g = _Graph.of(model.graph)
    opset = _default_opset(model)
    new_nodes, count = [], 0
    for node in g.nodes:
        rank = g.ranks.get(node.input[0]) if node.op_type == "ReduceMean" and node.input else None
        axes = _axes(g, node) if rank else None
        if rank is None or rank < 3 or not axes or sorted(a % rank for a in axes) != list(range(2, rank)) or not _conv_feature_map(g, node.input[0]):
            new_nodes.append(node)
            continue
        count += 1
        name = node.name or f"ReduceMean_{count}"
        if _attr(node, "keepdims", 1):
            new_nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=f"{name}_gap"))
            continue
        pooled = f"{node.output[0]}_gap"
        new_nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=f"{name}_gap"))
        spatial = list(range(2, rank))
        if opset >= 13:
            axes_name = f"{name}_squeeze_axes"
            model.graph.initializer.append(helper.make_tensor(axes_name, 7, [len(spatial)], spatial))
            new_nodes.append(helper.make_node("Squeeze", [pooled, axes_name], list(node.output), name=f"{name}_squeeze"))
        else:
            new_nodes.append(helper.make_node("Squeeze", [pooled], list(node.output), name=f"{name}_squeeze", axes=spatial))
    if count:
        _set_nodes(model.graph, new_nodes)
        _drop_unused_initializers(model.graph)
    return count


# Ops a conv feature map passes through between the Conv and the pooling (activations, residual adds).
_FEATURE_MAP_OPS = {"Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Add", "BatchNormalization", "Max", "MaxPool", "AveragePool"}


def _conv_feature_map(g: _Graph, name: str, hops: int = 4) -> bool:
    """Whether ``name`` is the output of a Conv, seen through up to ``hops`` activation / residual ops.

    Only such tensors are pooled with GlobalAveragePool: the point is to keep an int8 conv
    feature map in int8; a mean over something else (a mask, a count) stays a float ReduceMean.
    """
    node = g.producer.get(name)
    if node is None:
        return False
    if node.op_type == "Conv":
        return True
    if node.op_type not in _FEATURE_MAP_OPS or hops == 0:
        return False
    return any(_conv_feature_map(g, i, hops - 1) for i in node.input if i and i not in g.inits)


# --- multi-head self-attention -> com.microsoft.Attention ------------------------------------

@dataclass
class _Projection:
    """One of Q, K, V: input X times a weight block plus a bias block."""

    x: str
    weight: np.ndarray  # [in, hidden]
    bias: np.ndarray  # [hidden]
    nodes: list
    part: int | None  # which third of a fused QKV projection, None for a projection of its own


@dataclass
class _Match:
    x: str
    weight: np.ndarray
    bias: np.ndarray
    heads: int
    scale: float
    output: str
    nodes: list  # every node the fused op replaces; the fused node takes the place of the first


def fuse_attention(model) -> int:
    """Replace recognised self-attention blocks by com.microsoft.Attention. Returns the count."""
    from onnx import helper, numpy_helper

    g = _Graph.of(model.graph)
    matches: list[_Match] = []
    taken: set[int] = set()
    for softmax in [n for n in g.nodes if n.op_type == "Softmax"]:
        m = _match_attention(g, softmax)
        if m is None or any(id(n) in taken for n in m.nodes):
            continue
        taken.update(id(n) for n in m.nodes)
        matches.append(m)
    if not matches:
        return 0
    order = {id(n): i for i, n in enumerate(g.nodes)}
    replace: dict[int, object] = {}
    taken_names = {i.name for i in model.graph.initializer} | {n.name for n in g.nodes} | {o for n in g.nodes for o in n.output}
    for index, m in enumerate(matches):
        base = f"fused_attention_{index}"
        while {base, f"{base}_qkv_weight", f"{base}_qkv_bias"} & taken_names:  # a model built before
            base += "_"
        w_name, b_name = f"{base}_qkv_weight", f"{base}_qkv_bias"
        model.graph.initializer.extend([numpy_helper.from_array(m.weight.astype(np.float32), w_name), numpy_helper.from_array(m.bias.astype(np.float32), b_name)])
        node = helper.make_node("Attention", [m.x, w_name, b_name], [m.output], name=base, domain=MS_DOMAIN, num_heads=m.heads, scale=float(m.scale))
        first = min(m.nodes, key=lambda n: order[id(n)])
        replace[id(first)] = node
    dropped = {id(n) for m in matches for n in m.nodes}
    new_nodes = []
    for node in g.nodes:
        if id(node) in replace:
            new_nodes.append(replace[id(node)])
        elif id(node) not in dropped:
            new_nodes.append(node)
    _set_nodes(model.graph, new_nodes)
    _drop_unused_initializers(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(matches)


def _scaled(g: _Graph, name: str) -> tuple[str, float, list]:
    """Follow an optional Mul/Div by a scalar constant backwards: (source, factor, nodes)."""
    node = g.producer.get(name)
    if node is not None and node.op_type in ("Mul", "Div") and len(node.input) == 2:
        for data, const in ((0, 1), (1, 0)) if node.op_type == "Mul" else ((0, 1),):
            s = g.scalar(node.input[const])
            if s is not None and s != 0.0:
                return node.input[data], (s if node.op_type == "Mul" else 1.0 / s), [node]
    return name, 1.0, []


def _heads_path(g: _Graph, name: str, perms: tuple[list[int], ...]) -> tuple[str, int, int, list] | None:
    """name <- Transpose(s) <- Reshape(to [*, *, heads, head_size]): (source, heads, head_size, nodes)."""
    nodes = []
    for perm in reversed(perms):
        t = g.made_by(name, "Transpose")
        if t is None or _perm(t) != perm:
            return None
        nodes.append(t)
        name = t.input[0]
    r = g.made_by(name, "Reshape")
    shape = g.const(r.input[1]) if r is not None else None
    if shape is None or shape.shape != (4,) or shape[2] <= 0 or shape[3] <= 0:
        return None
    nodes.append(r)
    return r.input[0], int(shape[2]), int(shape[3]), nodes


def _k_path(g: _Graph, name: str):
    """K is transposed to [B, heads, head_size, T]: in one Transpose, in two, or (torch's
    scaled_dot_product_attention export) as Reshape [B*heads, T, head_size] -> Transpose [0, 2, 1]
    -> Reshape [B, heads, head_size, T] after the usual [0, 2, 1, 3] heads transpose."""
    found = _heads_path(g, name, ([0, 2, 3, 1],)) or _heads_path(g, name, ([0, 2, 1, 3], [0, 1, 3, 2]))
    if found is not None:
        return found
    unflat = g.made_by(name, "Reshape")
    t = g.made_by(unflat.input[0], "Transpose") if unflat is not None else None
    flat = g.made_by(t.input[0], "Reshape") if t is not None and _perm(t) == [0, 2, 1] else None
    if flat is None:
        return None
    found = _heads_path(g, flat.input[0], ([0, 2, 1, 3],))
    s4, s3 = g.const(unflat.input[1]), g.const(flat.input[1])
    if found is None or s4 is None or s3 is None or s4.shape != (4,) or s3.shape != (3,):
        return None
    heads, head_size = found[1], found[2]
    if int(s4[1]) != heads or int(s4[2]) != head_size or int(s3[2]) != head_size:
        return None
    return found[0], heads, head_size, [unflat, t, flat] + found[3]


def _projection(g: _Graph, name: str, hidden: int) -> _Projection | None:
    """``name`` = X @ W (+ b) itself, or one third of it along the last axis: an output of a
    3-way equal Split (dynamo's ``chunk``) or a Slice with constant bounds (TorchScript's)."""
    nodes = []
    part = None
    split = g.made_by(name, "Split")
    piece = g.made_by(name, "Slice")
    if split is not None:
        axis = int(_attr(split, "axis", 0))
        sizes = g.const(split.input[1]) if len(split.input) > 1 and split.input[1] else _attr(split, "split")
        if g.ranks.get(split.input[0]) != 3 or axis not in (-1, 2) or len(split.output) != 3:
            return None
        if sizes is not None and list(np.atleast_1d(sizes)) != [hidden] * 3:
            return None
        nodes.append(split)
        part = list(split.output).index(name)
        name = split.input[0]
    elif piece is not None:
        names = list(piece.input[1:5]) + [""] * (5 - len(piece.input))  # starts, ends, axes, steps
        starts, ends, axes, steps = (g.const(i) if i else None for i in names)
        if starts is None or ends is None or starts.size != 1 or ends.size != 1 or g.ranks.get(piece.input[0]) != 3:
            return None
        if axes is None or axes.size != 1 or int(axes.reshape(())) not in (-1, 2):
            return None  # no axes means axis 0
        if steps is not None and (steps.size != 1 or int(steps.reshape(())) != 1):
            return None
        start, end = int(starts.reshape(())), int(ends.reshape(()))
        if start % hidden or end - start != hidden or not 0 <= start < 3 * hidden:
            return None
        nodes.append(piece)
        part = start // hidden
        name = piece.input[0]
    bias = None
    add = g.made_by(name, "Add")
    if add is not None:
        for data, const in ((0, 1), (1, 0)):
            b = g.const(add.input[const])
            if b is not None and b.ndim == 1 and g.made_by(add.input[data], "MatMul") is not None:
                bias, name = b, add.input[data]
                nodes.append(add)
                break
        else:
            return None
    mm = g.made_by(name, "MatMul")
    w = g.const(mm.input[1]) if mm is not None else None
    if w is None or w.ndim != 2 or g.ranks.get(mm.input[0]) != 3:
        return None
    nodes.append(mm)
    width = w.shape[1]
    bias = np.zeros(width, dtype=np.float32) if bias is None else bias
    if bias.shape != (width,):
        return None
    if part is not None:
        if width != 3 * hidden:
            return None
        w, bias = w[:, part * hidden:(part + 1) * hidden], bias[part * hidden:(part + 1) * hidden]
    elif width != hidden:
        return None
    return _Projection(mm.input[0], w, bias, nodes, part)


def _match_attention(g: _Graph, softmax) -> _Match | None:
    rank = g.ranks.get(softmax.input[0])
    axis = int(_attr(softmax, "axis", -1))
    if axis not in (-1, 3) or (rank is not None and rank != 4):
        return None
    av = g.single_consumer(softmax.output[0], "MatMul")
    if av is None or av.input[0] != softmax.output[0]:
        return None
    scores, scale, nodes = _scaled(g, softmax.input[0])
    qk = g.made_by(scores, "MatMul")
    if qk is None:
        return None
    nodes = [softmax, av, qk] + nodes
    q_name, q_scale, q_nodes = _scaled(g, qk.input[0])
    k_name, k_scale, k_nodes = _scaled(g, qk.input[1])
    q = _heads_path(g, q_name, ([0, 2, 1, 3],))
    k = _k_path(g, k_name)
    v = _heads_path(g, av.input[1], ([0, 2, 1, 3],))
    if q is None or k is None or v is None:
        return None
    heads, head_size = q[1], q[2]
    if (k[1], k[2]) != (heads, head_size) or (v[1], v[2]) != (heads, head_size):
        return None
    hidden = heads * head_size
    projections = [_projection(g, src, hidden) for src in (q[0], k[0], v[0])]
    if any(p is None for p in projections) or len({p.x for p in projections}) != 1:
        return None
    parts = [p.part for p in projections]
    if parts != [None] * 3 and sorted(parts) != [0, 1, 2]:
        return None  # Q, K and V must be three different thirds of one projection, or three projections
    # Heads merged back: Transpose [0, 2, 1, 3] then Reshape to [*, *, hidden].
    merge = g.single_consumer(av.output[0], "Transpose")
    if merge is None or _perm(merge) != [0, 2, 1, 3]:
        return None
    out = g.single_consumer(merge.output[0], "Reshape")
    shape = g.const(out.input[1]) if out is not None else None
    if shape is None or shape.shape != (3,) or not (shape[2] == hidden or (shape[2] == -1 and -1 not in shape[:2])):
        return None
    nodes += q_nodes + k_nodes + q[3] + k[3] + v[3] + [merge, out]
    for p in projections:
        nodes += [n for n in p.nodes if all(n is not m for m in nodes)]
    # Everything inside must feed only the block: no other consumer, not a graph output.
    inside = {id(n) for n in nodes}
    for n in nodes:
        if n is out:
            continue
        for o in n.output:
            if o in g.outputs or any(id(c) not in inside for c in g.consumers.get(o, [])):
                return None
    weight = np.concatenate([p.weight for p in projections], axis=1)
    bias = np.concatenate([p.bias for p in projections])
    return _Match(projections[0].x, weight, bias, heads, scale * q_scale * k_scale, out.output[0], nodes)


# --- helpers ---------------------------------------------------------------------------------

def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _set_nodes(graph, nodes: list) -> None:
    """Replace graph.node by ``nodes`` (copied first: clearing the field may release the originals)."""
    copies = []
    for n in nodes:
        c = type(n)()
        c.CopyFrom(n)
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)


def _drop_unused_initializers(graph) -> None:
    """Remove initializers no node (subgraphs included) reads any more."""
    used = set()

    def walk(gr):
        for node in gr.node:
            used.update(node.input)
            for a in node.attribute:
                if a.g and a.g.node:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)

    walk(graph)
    used.update(o.name for o in graph.output)
    keep = [i for i in graph.initializer if i.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


# --- the pass --------------------------------------------------------------------------------


class FuseOptions(PassOptions):
    global_pool: bool = Field(default=False, description="ReduceMean over all spatial axes -> GlobalAveragePool (QLinearGlobalAveragePool in int8)")
    attention: bool = Field(default=False, description="hand-written / SDPA multi-head self-attention -> com.microsoft.Attention (QAttention in dynamic int8)")


@register_pass
class FuseGraph(Pass):
    name = "fuse-graph"
    description = "exact graph rewrites that unlock onnxruntime's fused int8 kernels (global pooling, multi-head attention)"
    Options = FuseOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx

        model = onnx.load_model_from_string(artifact.data)
        if self.options.attention:
            model = _fold_constants(model, ctx)
        try:
            # Ranks decide what may be fused; preprocess has usually inferred them already.
            model = onnx.shape_inference.infer_shapes(model)
        except Exception as e:  # inference fails on some exotic graphs: fuse with what is known
            ctx.log.append(f"fuse-graph: ONNX shape inference failed ({type(e).__name__}), fusing with the shapes already known")
        done = []
        if self.options.global_pool:
            n = rewrite_global_pool(model)
            done.append(f"{n} ReduceMean -> GlobalAveragePool")
        if self.options.attention:
            n = fuse_attention(model)
            done.append(f"{n} multi-head attention blocks -> com.microsoft.Attention")
        ctx.log.append(f"fuse-graph: {', '.join(done) if done else 'nothing requested'}")
        return Artifact("onnx", data=model.SerializeToString())


def _fold_constants(model, ctx: PassContext):
    """Fold shape arithmetic to constants (onnxscript's folder): the TorchScript exporter computes
    reshape targets and slice bounds from Shape at run time, which hides the attention pattern."""
    import onnx

    try:
        from onnxscript import ir, optimizer

        folded = ir.serde.deserialize_model(model)
        optimizer.fold_constants(folded)
        optimizer.remove_unused_nodes(folded)
        return onnx.load_model_from_string(ir.serde.serialize_model(folded).SerializeToString())
    except Exception as e:  # onnxscript missing, or an op its folder does not know
        ctx.log.append(f"fuse-graph: constant folding skipped ({type(e).__name__}: {str(e).strip()[:120]})")
        return model
