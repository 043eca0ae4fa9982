"""Step-time cost models of named GPU + model pairs, from the roofline.

A step feeds `num_batched_tokens` tokens (decodes and prompt chunks) and reads the KV cache of every
scheduled request. Its time is the larger of its compute time and its memory time, plus a fixed
per-step overhead (launches, sampling, the scheduler itself):

    memory_s  = (weight bytes + KV bytes read + KV bytes written) / (bandwidth * bandwidth_efficiency)
    compute_s = (2 * params * tokens + 4 * layers * hidden * sum_chunks(new tokens * context)) / (peak * mfu)
    step_s    = overhead_s + max(memory_s, compute_s)

Decode steps are memory-bound (the weights are read once per step whatever the batch), long prompt
chunks compute-bound. The KV pool is what the card holds after the weights and an activation reserve.
Efficiencies are typical of vLLM-class engines (80% of copy bandwidth, 60% MFU); `--cost-coefficients`
replaces the roofline with a linear model fitted on measured steps (OnlineStepCostModel's terms).

KV pool dtype (`--kv-dtype`, issue 19): bf16 (vLLM's default) or int8 as the engine stores it
(services/engine/kv_quant.py: one float32 scale per (block, layer, K/V, kv head), quantized on write):

    bytes per token   bf16: 2 x elements            int8: elements + 4 x 2 x layers x kv heads / block size
                      (elements = 2 x layers x kv heads x head dim; int8 holds 1.97x the tokens of bf16)
    KV read           int8 bytes at the bf16 kernel's bandwidth / int8_attention_efficiency
                      (roofline: 1.0, the same time per byte; dequantizing in registers is free)
    KV write          int8: read the new bf16 K/V + write int8 + re-quantize half a block on average
                      (the write kernel rescales a block's earlier positions when a head's scale
                      grows; charged on every new token, a pessimistic bound)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.engine.scheduler import SchedulerOutput, StepCostCoefficients

GB = 1e9
BLOCK_SIZE_TOKENS = 16
SCALE_BYTES = 4  # one float32 int8 scale


class KvDtype(str, enum.Enum):
    BF16 = "bf16"
    INT8 = "int8"


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: float  # HBM capacity
    bandwidth_bytes_per_s: float  # peak HBM bandwidth
    peak_flops: float  # dense bf16/fp16 tensor FLOP/s


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_params: float
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    bytes_per_param: float = 2.0  # bf16

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V, every layer, bf16."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2.0


H100_SXM = GpuSpec("H100-SXM-80GB", 80 * GB, 3.35e12, 989e12)
A100_40GB = GpuSpec("A100-SXM-40GB", 40 * GB, 1.555e12, 312e12)
LLAMA3_8B = ModelSpec("Llama-3-8B", 8.03e9, 32, 4096, 8, 128)
LLAMA2_7B = ModelSpec("Llama-2-7B", 6.74e9, 32, 4096, 32, 128)
LLAMA2_13B = ModelSpec("Llama-2-13B", 13.0e9, 40, 5120, 40, 128)


@dataclass(frozen=True)
class RooflineCostModel:
    """Step time of one GPU + model pair; also sizes the KV pool."""

    name: str  # preset name
    gpu: GpuSpec
    model: ModelSpec
    gpu_memory_utilization: float = 0.9  # share of HBM the engine may use (vLLM's default)
    activation_reserve_bytes: float = 4 * GB  # activations, CUDA graphs, allocator slack
    bandwidth_efficiency: float = 0.8
    mfu: float = 0.6
    step_overhead_s: float = 0.002
    kv_cache_bytes_override: float | None = None  # a smaller pool than the card holds (KV-scarce runs)
    kv_dtype: KvDtype = KvDtype.BF16  # how the pool stores KV (see the module docstring)
    int8_attention_efficiency: float = 1.0  # int8 attention's bandwidth relative to bf16's (roofline: 1)

    @property
    def kv_bytes_per_token(self) -> float:
        """Pool bytes one token's KV takes (all layers, K and V), in the pool's dtype."""
        model = self.model
        if self.kv_dtype is KvDtype.BF16:
            return model.kv_bytes_per_token
        elements = model.kv_bytes_per_token / 2
        return elements + SCALE_BYTES * 2 * model.num_layers * model.num_kv_heads / BLOCK_SIZE_TOKENS

    @property
    def kv_write_bytes_per_token(self) -> float:
        """Bytes moved to store one new token's KV (see the module docstring)."""
        if self.kv_dtype is KvDtype.BF16:
            return self.model.kv_bytes_per_token
        elements = self.model.kv_bytes_per_token / 2
        return 2 * elements + elements + 2 * elements * BLOCK_SIZE_TOKENS / 2

    @property
    def kv_read_bytes_per_token(self) -> float:
        """Bytes per context token attention reads, scaled to bf16-kernel time."""
        if self.kv_dtype is KvDtype.BF16:
            return self.model.kv_bytes_per_token
        return self.kv_bytes_per_token / self.int8_attention_efficiency

    @property
    def kv_cache_bytes(self) -> float:
        if self.kv_cache_bytes_override is not None:
            return self.kv_cache_bytes_override
        usable = self.gpu.memory_bytes * self.gpu_memory_utilization
        return usable - self.model.weight_bytes - self.activation_reserve_bytes

    @property
    def num_kv_blocks(self) -> int:
        return int(self.kv_cache_bytes // (self.kv_bytes_per_token * BLOCK_SIZE_TOKENS))

    def step_time_s(self, output: SchedulerOutput) -> float:
        model = self.model
        num_tokens = output.num_scheduled_tokens
        kv_read = output.num_kv_tokens_read
        kv_bytes = self.kv_read_bytes_per_token * kv_read + self.kv_write_bytes_per_token * num_tokens
        memory_bytes = model.weight_bytes + kv_bytes
        memory_s = memory_bytes / (self.gpu.bandwidth_bytes_per_s * self.bandwidth_efficiency)
        attention_pairs = sum(chunk.num_new_tokens * chunk.num_context_tokens for chunk in output.chunks)
        flops = 2 * model.num_params * num_tokens + 4 * model.num_layers * model.hidden_size * attention_pairs
        compute_s = flops / (self.gpu.peak_flops * self.mfu)
        return self.step_overhead_s + max(memory_s, compute_s)

    def linear_prior(self) -> StepCostCoefficients:
        """A first guess for the engine's online cost model (it refits from the simulated steps)."""
        bandwidth = self.gpu.bandwidth_bytes_per_s * self.bandwidth_efficiency
        return StepCostCoefficients(
            base_s=self.step_overhead_s + self.model.weight_bytes / bandwidth,
            per_token_s=2 * self.model.num_params / (self.gpu.peak_flops * self.mfu),
            per_kv_token_s=self.kv_read_bytes_per_token / bandwidth,
        )


@dataclass(frozen=True)
class LinearCostModel:
    """A step-time model fitted on measured steps (e.g. the engine's OnlineStepCostModel)."""

    name: str
    coefficients: StepCostCoefficients
    num_kv_blocks: int

    def step_time_s(self, output: SchedulerOutput) -> float:
        return self.coefficients.step_time_s(output.num_scheduled_tokens, output.num_kv_tokens_read)

    def linear_prior(self) -> StepCostCoefficients:
        return self.coefficients


PRESETS = {
    "llama3-8b-h100": RooflineCostModel("llama3-8b-h100", H100_SXM, LLAMA3_8B),
    "llama2-7b-h100": RooflineCostModel("llama2-7b-h100", H100_SXM, LLAMA2_7B),
    "llama2-13b-a100-40g": RooflineCostModel("llama2-13b-a100-40g", A100_40GB, LLAMA2_13B),
}
