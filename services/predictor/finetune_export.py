"""ONNX export of the fine-tuned length encoder's two graphs (needs torch, transformers, onnxscript).

    bottom  input_ids, attention_mask int64 [n, t]  -> hidden_states float32 [n, t, 384]
            the packaged MiniLM's embeddings + layers 0..NUM_FROZEN_LAYERS-1; one file per machine
            in <cache>/embedding/<EncoderSpec.graph_name>.onnx, built on first use or at install
            (`alise predictor export-embedding`), like the frozen embedding graph
    top     hidden_states float32 [n, t, 384], attention_mask int64 [n, t] -> length_scores float32 [n, G]
            a trained model's retrained layers + pooling + head; its bytes are the model
            directory's encoder.onnx (artifact.py)

Both are exported from eager attention and quantized like the embedding graph (dynamic int8, per
output channel; see embedding_export.py for why): a 4x smaller top graph (~3.6 MB) and ~2x
faster CPU inference. The int8 top graph differs from torch's float scores by rounding only;
`max_score_difference` measures it and tests bound it.

The top graph's weights are 7-bit (ONNX Runtime's reduce_range). Why: on x86 CPUs without VNNI
(AVX2 only, such as the AMD EPYC development machine of 2026-12-07) ONNX Runtime's u8 x s8 kernel adds
pairs of products in int16, which saturates with 8-bit weights: a test graph's scores moved by 0.145
log-tokens from torch's there, 0.055 with 7-bit weights (which cannot saturate: 2 x 255 x 63 < 2^15),
and VNNI CPUs compute the same 7-bit sums exactly. Models trained before (up to `432bda9df892`) have
8-bit top graphs. The bottom graph keeps 8-bit weights: installed models were trained on its bytes
under its file name (a new recipe would need a new export_revision).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from services.predictor.embedding import weights_dir
from services.predictor.finetune_encoder import (
    ATTENTION_MASK_NAME,
    HIDDEN_STATES_NAME,
    INPUT_IDS_NAME,
    SCORES_NAME,
)
from services.predictor.finetune_model import MASK_FILL, NUM_FROZEN_LAYERS, load_base_encoder

_EXAMPLE_SHAPE = (2, 16)  # batch x word pieces of the tracing example; both axes are exported dynamic


def bottom_module(base, num_frozen_layers: int = NUM_FROZEN_LAYERS):
    """The frozen part as one torch module: word pieces -> hidden states after num_frozen_layers layers."""
    import torch

    class BottomEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = base.embeddings
            self.layers = torch.nn.ModuleList(base.encoder.layer[:num_frozen_layers])

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * MASK_FILL
            for layer in self.layers:
                hidden = layer(hidden, additive)
            return hidden

    return BottomEncoder().eval()


def _export(
    module,
    example: tuple,
    input_names: list[str],
    output_name: str,
    out_path: Path,
    quantize: bool,
    op_types: list[str] | None = None,
    reduce_range: bool = False,
) -> None:
    """torch module -> ONNX file (dynamic batch and word-piece axes), int8 weights when quantize.

    op_types: the node types to quantize (None: ONNX Runtime's default set); reduce_range: 7-bit
    weights (the module docstring's last paragraph).
    """
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    warnings.filterwarnings("ignore", module="torch")  # tracer and dynamic-shape chatter
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    dynamic = tuple({0: batch, 1: tokens} for _ in example)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".export-") as work_dir:
        float_path = Path(work_dir) / "float.onnx"
        with torch.no_grad():
            program = torch.onnx.export(
                module.eval(),
                example,
                input_names=input_names,
                output_names=[output_name],
                dynamic_shapes=dynamic,
                dynamo=True,
            )
        proto = program.model_proto
        # Drop the exporter's intermediate shape annotations: ONNX Runtime's quantizer re-infers
        # them, and disagrees with the exporter's on the head's Gemm (384 vs G), failing the export.
        del proto.graph.value_info[:]
        onnx.save_model(proto, str(float_path), save_as_external_data=False)
        result = float_path
        if quantize:
            result = Path(work_dir) / "int8.onnx"
            quantize_dynamic(
                str(float_path),
                str(result),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=op_types,
                reduce_range=reduce_range,
            )
        os.replace(result, out_path)


def export_bottom_graph(
    out_path: Path,
    *,
    num_frozen_layers: int = NUM_FROZEN_LAYERS,
    quantize: bool = True,
    progress: Callable[[str], None] = print,
) -> Path:
    """Exports the frozen bottom of the packaged MiniLM to out_path (atomic rename); returns it."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    progress(f"exporting the frozen bottom of {weights_dir().name} ({num_frozen_layers} layers) to ONNX ...")
    example = (torch.ones(_EXAMPLE_SHAPE, dtype=torch.long), torch.ones(_EXAMPLE_SHAPE, dtype=torch.long))
    _export(
        bottom_module(load_base_encoder(), num_frozen_layers),
        example,
        [INPUT_IDS_NAME, ATTENTION_MASK_NAME],
        HIDDEN_STATES_NAME,
        out_path,
        quantize,
    )
    progress(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB)")
    return out_path


def export_top_graph(top, *, quantize: bool = True) -> bytes:
    """The ONNX bytes of a trained TopEncoder (int8 weights unless quantize is False)."""
    import torch

    from services.predictor.finetune_model import HIDDEN_SIZE

    example = (torch.zeros((*_EXAMPLE_SHAPE, HIDDEN_SIZE)), torch.ones(_EXAMPLE_SHAPE, dtype=torch.long))
    with tempfile.TemporaryDirectory(prefix="alise-top-") as work_dir:
        path = Path(work_dir) / "top.onnx"
        # The layers' MatMuls only: the head's Gemm (384 x G weights) stays float.
        inputs = [HIDDEN_STATES_NAME, ATTENTION_MASK_NAME]
        _export(top, example, inputs, SCORES_NAME, path, quantize, ["MatMul"], reduce_range=True)
        return path.read_bytes()


def max_score_difference(top, top_bytes: bytes, hidden_states: list[np.ndarray]) -> float:
    """Largest |ONNX - torch| score over prompts (each [t, 384], run alone as served)."""
    import torch

    from services.predictor.onnx_session import make_session

    session = make_session(top_bytes, intra_op_threads=1, allow_cuda=False)
    worst = 0.0
    top.eval()
    with torch.no_grad():
        for states in hidden_states:
            mask = np.ones((1, states.shape[0]), np.int64)
            want = top(torch.from_numpy(states[None].astype(np.float32)), torch.from_numpy(mask)).numpy()
            got = session.run(
                [SCORES_NAME], {HIDDEN_STATES_NAME: states[None].astype(np.float32), ATTENTION_MASK_NAME: mask}
            )[0]
            worst = max(worst, float(np.max(np.abs(got - want))))
    return worst
