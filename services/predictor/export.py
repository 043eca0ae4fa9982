"""XGBoost boosters -> one ONNX graph with one output per head (training-time only).

Why one graph: the server answers a batch with a single ONNX Runtime call instead of one per head.
Why one booster per head: onnxmltools converts single-output boosters exactly, but a multi-quantile
booster (quantile_alpha=[0.1, 0.5, 0.9]) comes out wrong (checked with onnxmltools 1.16).

    features [n, F] --+--> TreeEnsemble(mean) -------------------------> mean_tokens [n, 1]
                      +--> TreeEnsemble(q10) -> Exp -> Sub(1) (expm1) --> q10_tokens  [n, 1]
                      +--> ...

Traps (DESIGN.md section 5): the booster's feature names must be f0..fN (we clear them), and the
target opset stays at the converter's default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from services.predictor.artifact import INPUT_NAME


class HeadTransform(enum.Enum):
    """What turns a booster's output into tokens."""

    IDENTITY = "identity"  # the booster predicts tokens (e.g. reg:tweedie, whose exp is in the graph)
    EXPM1 = "expm1"  # the booster predicts log1p(tokens)


@dataclass(frozen=True)
class Head:
    """One output of the merged graph."""

    output_name: str  # graph output name, e.g. "q50_tokens"
    booster: Any  # a trained xgboost.Booster
    transform: HeadTransform  # applied after the trees, inside the graph


def booster_to_onnx(booster: Any, num_features: int) -> onnx.ModelProto:
    """One booster as its own ONNX model: input "features" [n, num_features], one output [n, 1]."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = booster.copy()  # clearing names must not change the caller's booster
    booster.feature_names = None
    booster.feature_types = None
    return onnxmltools.convert_xgboost(booster, initial_types=[(INPUT_NAME, FloatTensorType([None, num_features]))])


def _renamed(name: str, prefix: str) -> str:
    return name if name in ("", INPUT_NAME) else f"{prefix}/{name}"


def _append_head(graph_parts: dict[str, list], head_model: onnx.ModelProto, head: Head) -> None:
    """Copies a head's nodes and initializers with names prefixed, then its transform."""
    prefix = head.output_name
    for node in head_model.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}/{node.name or node.op_type}"
        copy.input[:] = [_renamed(name, prefix) for name in node.input]
        copy.output[:] = [_renamed(name, prefix) for name in node.output]
        graph_parts["nodes"].append(copy)
    for initializer in head_model.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(initializer)
        copy.name = _renamed(initializer.name, prefix)
        graph_parts["initializers"].append(copy)
    raw_output = _renamed(head_model.graph.output[0].name, prefix)
    if head.transform is HeadTransform.IDENTITY:
        graph_parts["nodes"].append(helper.make_node("Identity", [raw_output], [head.output_name]))
    else:
        one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), f"{prefix}/one")
        graph_parts["initializers"].append(one)
        graph_parts["nodes"].append(helper.make_node("Exp", [raw_output], [f"{prefix}/exp"]))
        graph_parts["nodes"].append(helper.make_node("Sub", [f"{prefix}/exp", one.name], [head.output_name]))
    graph_parts["outputs"].append(helper.make_tensor_value_info(head.output_name, onnx.TensorProto.FLOAT, [None, 1]))


def merge_heads(heads: Sequence[Head], num_features: int) -> onnx.ModelProto:
    """One ONNX model computing every head from the shared "features" input; checked by onnx."""
    if not heads:
        raise ValueError("at least one head is needed")
    graph_parts: dict[str, list] = {"nodes": [], "initializers": [], "outputs": []}
    head_models = [booster_to_onnx(head.booster, num_features) for head in heads]
    for head, head_model in zip(heads, head_models):
        _append_head(graph_parts, head_model, head)
    graph = helper.make_graph(
        graph_parts["nodes"],
        "alise_output_length",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [None, num_features])],
        graph_parts["outputs"],
        initializer=graph_parts["initializers"],
    )
    first = head_models[0]
    # Sorted: the converter lists opsets in set order, which varies between runs (hash seeds), and
    # the bytes (hence model_version) must depend on the model alone.
    opsets = sorted(first.opset_import, key=lambda opset: opset.domain)
    merged = helper.make_model(graph, opset_imports=opsets, producer_name="alise")
    merged.ir_version = first.ir_version
    onnx.checker.check_model(merged)
    return merged
