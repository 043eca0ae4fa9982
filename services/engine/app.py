"""Builds and starts an engine from its EngineConfig (used by __main__ and by tests)."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib

import torch

from services.common.contracts import engine_service_pb2_grpc, memory_service_pb2
from services.common.metrics_server import serve_metrics
from services.common.server import ServiceHandle, start_server
from services.engine.admission_control import AdmissionLimits
from services.engine.block_pool import KvBlockManager
from services.engine.config import EngineConfig
from services.engine.engine_core import EngineCore
from services.engine.engine_loop import EngineLoop
from services.engine.kv_cache import KvCacheShape, kv_cache_num_blocks, kv_torch_dtype
from services.engine.kv_offload.memory_client import MemoryClient
from services.engine.kv_offload.offloader import KvOffloader
from services.engine.memory_reporter import MemoryReporter
from services.engine.metrics import EngineMetrics
from services.engine.model_loader import LoadedModel, load_model
from services.engine.model_runner import ModelRunner
from services.engine.scheduler import OnlineStepCostModel, Scheduler, SchedulerLimits, make_policy
from services.engine.scheduler.speculative_policy import with_ttft_target
from services.engine.servicer import EngineServicer, ServedModelInfo
from services.engine.spec.engine_setup import make_speculator

log = logging.getLogger(__name__)

SERVICE_NAME = "alise.v1.EngineService"
_KV_DTYPES = {
    torch.float32: memory_service_pb2.KV_DTYPE_FLOAT32,
    torch.float16: memory_service_pb2.KV_DTYPE_FLOAT16,
    torch.bfloat16: memory_service_pb2.KV_DTYPE_BFLOAT16,
}


def resolve_device_and_dtype(config: EngineConfig) -> tuple[torch.device, torch.dtype]:
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but torch sees no CUDA device")
    device = torch.device("cuda" if use_cuda else "cpu")
    if device.type == "cpu":
        # The engine shares the machine with the other services; oversubscribed OpenMP threads
        # spin-wait and were measured 17x slower per step on a busy 2-core machine.
        torch.set_num_threads(config.cpu_threads or max(1, (os.cpu_count() or 2) // 2))
    if config.dtype == "auto":
        return device, torch.bfloat16 if use_cuda or cpu_has_native_bf16() else torch.float32
    return device, getattr(torch, config.dtype)


def cpu_has_native_bf16(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 GEMMs were measured
    4.5x faster than fp32 (32x576x1536, 2 threads, EPYC), a whole SmolLM2 decode step ~2x.
    Without it, bf16 is emulated and slower than fp32."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def build_engine(config: EngineConfig, loaded: LoadedModel) -> tuple[EngineCore, KvCacheShape, ServedModelInfo]:
    """Sizes the KV pool, then wires scheduler, runner and core."""
    model_config = loaded.model.config
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    probe = KvCacheShape(
        model_config.num_hidden_layers, 1, config.block_size_tokens, model_config.num_key_value_heads, head_dim
    )
    dtype = next(loaded.model.parameters()).dtype
    kv_dtype = kv_torch_dtype(config.kv_cache_dtype, dtype)  # int8: about twice the blocks in the same MiB
    num_blocks = config.num_kv_blocks or kv_cache_num_blocks(
        config.kv_cache_memory_mb * 1024 * 1024, probe.block_bytes(kv_dtype)
    )
    max_model_len = min(config.max_model_len or loaded.max_context_tokens, loaded.max_context_tokens)
    kv = KvBlockManager(num_blocks, config.block_size_tokens)
    limits = SchedulerLimits(
        config.max_num_seqs,
        config.max_num_batched_tokens,
        max_model_len,
        config.max_wait_s,
        config.readmit_headroom_tokens,
    )
    cost_model = OnlineStepCostModel()  # calibrated from this engine's measured steps
    policy = with_ttft_target(make_policy(config.scheduler_policy, cost_model), config.ttft_target_s)
    scheduler = Scheduler(policy, limits, kv, loaded.eos_token_id, cost_model=cost_model)
    runner = ModelRunner(
        loaded.model,
        kv,
        num_blocks,
        enforce_eager=config.enforce_eager,
        max_num_seqs=config.max_num_seqs,
        max_model_len=max_model_len,
        kv_dtype=kv_dtype,
    )
    info = ServedModelInfo(
        loaded.model_name,
        loaded.tokenizer,
        max_model_len,
        loaded.vocab_size,
        loaded.eos_token_id,
        loaded.has_chat_template,
    )
    speculator = make_speculator(
        config.speculative_config(), cost_model, max_model_len, runner, loaded.model, config.model
    )
    return EngineCore(scheduler, runner, speculator=speculator), runner.cache_shape, info


async def start(config: EngineConfig) -> ServiceHandle:
    """Loads the model, starts the engine thread, the gRPC server and the memory reporter."""
    device, dtype = resolve_device_and_dtype(config)
    loaded = await asyncio.to_thread(load_model, config.model, dtype=dtype, device=device, seed=config.seed)
    core, cache_shape, info = build_engine(config, loaded)
    log.info(
        "model %s on %s/%s; KV pool %d blocks x %d tokens",
        info.model_name,
        device,
        dtype,
        cache_shape.num_blocks,
        cache_shape.block_size,
    )
    offloader = None
    if config.memory_address:  # preempted KV is negotiated with the memory service from the first step
        offloader = KvOffloader(
            core.runner.cache, MemoryClient(config.memory_address, config.engine_id, tls=config.tls)
        )
        core.scheduler.eviction = offloader
    metrics = EngineMetrics(info.model_name)
    engine_loop = EngineLoop(core, config.engine_id, on_finish=metrics.on_finish)
    metrics.watch(core, lambda: engine_loop.snapshot, offloader.measurements if offloader else None)
    engine_loop.start(asyncio.get_running_loop())
    limits = AdmissionLimits(
        config.max_waiting_requests,
        config.max_waiting_prompt_tokens,
        config.deadline_admission_slack,
        config.max_queue_wait_steps,
    )
    servicer = EngineServicer(engine_loop, info, config.max_waiting_requests, limits, config.max_num_seqs)
    running = await start_server(
        host=config.host,
        port=config.port,
        register=lambda server: engine_service_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        tls=config.tls,
        require_client_cert=config.tls is not None and config.tls.verifies_peers,
    )
    handle = ServiceHandle(running)
    if config.memory_address:
        layout = memory_service_pb2.KvBlockLayout(
            block_size_tokens=cache_shape.block_size,
            num_layers=cache_shape.num_layers,
            num_kv_heads=cache_shape.num_kv_heads,
            head_dim=cache_shape.head_dim,
            # the pool's dtype (--kv-cache-dtype), not the model's: a bf16 pool of an fp32 model is half the bytes
            dtype=_KV_DTYPES.get(core.runner.cache.dtype, memory_service_pb2.KV_DTYPE_UNSPECIFIED),
            block_bytes=cache_shape.block_bytes(core.runner.cache.dtype),
        )
        reporter = MemoryReporter(
            config.memory_address,
            running.address,
            info.model_name,
            engine_loop,
            layout,
            offloader.attach_region,
            offloader.retry_failed_releases,
            tls=config.tls,
        )
        reporter.start()
        handle.on_stop.append(reporter.stop)

    async def stop_engine_thread() -> None:
        await asyncio.to_thread(engine_loop.stop)

    handle.on_stop.append(stop_engine_thread)
    if config.memory_address:  # after the engine thread, its only caller, has stopped

        async def close_offloader() -> None:
            await asyncio.to_thread(offloader.close)

        handle.on_stop.append(close_offloader)
    await serve_metrics(handle, metrics.registry, config.host, config.metrics_port)
    return handle
