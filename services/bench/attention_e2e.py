"""End-to-end tokens/s of a Llama-3-8B-shaped model with random weights (part of `alise bench attention`).

For each batch size B: B prompts of C random tokens, N output tokens each (greedy, no EOS stop):

    alise engine     our scheduler, model runner and CUDA kernels (built by app.build_engine, bf16
                     KV, chunked prefill), the model object shared with HF
    HF generate()    the same model, static batching (B equal-length prompts: no padding)
    roofline         decode bound: B tokens per step, a step moving all weights except the
                     embedding table plus every request's KV, at the measured copy bandwidth

Output tokens/s = B * N / wall time including prefill (both systems); the engine also reports
decode-only tokens/s (steps that only decode), which the roofline bound is about.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from services.engine.model_presets import ARCHITECTURE_PRESETS, preset_config
from services.engine.request import Request, SamplingOptions

LLAMA3_8B_SHAPE = ARCHITECTURE_PRESETS["llama3-8b"]
PREFILL_TOKEN_BUDGET = 8192  # engine step token budget (chunked prefill)
WARMUP_OUTPUT_TOKENS = 4


def build_model(device: torch.device) -> torch.nn.Module:
    """Llama-3-8B shape, random bf16 weights initialized directly on the GPU."""
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[torch.cuda.current_device()]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(preset_config("llama3-8b"))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _prompts(batch: int, context_len: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, LLAMA3_8B_SHAPE["vocab_size"], (batch, context_len), generator=generator).tolist()


def run_engine(model, prompts: list[list[int]], output_tokens: int) -> dict[str, Any]:
    from services.engine.app import build_engine
    from services.engine.config import EngineConfig
    from services.engine.model_loader import LoadedModel

    batch, context_len = len(prompts), len(prompts[0])
    max_len = context_len + output_tokens
    loaded = LoadedModel(model, "llama3-8b-shape-random", "default", max_len, LLAMA3_8B_SHAPE["vocab_size"], None)
    config = EngineConfig(
        num_kv_blocks=batch * (-(-max_len // 16) + 1),
        block_size_tokens=16,
        max_num_seqs=batch,
        max_num_batched_tokens=PREFILL_TOKEN_BUDGET,
        max_model_len=max_len,
        dtype="bfloat16",
        device="cuda",
    )
    core, _, _ = build_engine(config, loaded)
    sampling = SamplingOptions(max_tokens=output_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        core.add(
            Request(
                request_id=f"e{index}",
                prompt_token_ids=prompt,
                sampling=sampling,
                arrival_time_s=time.monotonic(),
                predicted_output_tokens=float(output_tokens),
            )
        )
    decode_s, decode_tokens, num_tokens = 0.0, 0, 0
    torch.cuda.synchronize()
    started = time.perf_counter()
    while core.scheduler.has_work:
        step_started = time.perf_counter()
        core.step()  # sampling returns host ints: every step ends synchronized
        step = core.last_step
        if step is not None and step.num_scheduled_tokens == step.num_sampled_tokens:
            decode_s += time.perf_counter() - step_started
            decode_tokens += step.num_sampled_tokens
        num_tokens += 0 if step is None else step.num_sampled_tokens
    total_s = time.perf_counter() - started
    backend = core.runner.attention.kind.value
    del core
    return {
        "system": f"alise engine ({backend})",
        "batch": batch,
        "wall_s": total_s,
        "output_tokens": num_tokens,
        "output_tokens_per_s": num_tokens / total_s,
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s else None,
    }


def run_hf(model, prompts: list[list[int]], output_tokens: int) -> dict[str, Any]:
    input_ids = torch.tensor(prompts, device="cuda")
    with torch.inference_mode():
        torch.cuda.synchronize()
        started = time.perf_counter()
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=output_tokens,
            min_new_tokens=output_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        torch.cuda.synchronize()
    total_s = time.perf_counter() - started
    num_tokens = (generated.shape[1] - input_ids.shape[1]) * len(prompts)
    return {
        "system": "HF generate (static)",
        "batch": len(prompts),
        "wall_s": total_s,
        "output_tokens": num_tokens,
        "output_tokens_per_s": num_tokens / total_s,
    }


def roofline(model, batch: int, context_len: int, output_tokens: int, copy_gb_per_s: float) -> dict[str, Any]:
    """Decode tokens/s if every step only moved its minimum bytes at the copy bandwidth."""
    shape = LLAMA3_8B_SHAPE
    embedding = model.get_input_embeddings().weight
    weight_bytes = (
        sum(p.numel() * p.element_size() for p in model.parameters()) - embedding.numel() * embedding.element_size()
    )
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    kv_bytes_per_token = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * 2
    mean_context = context_len + output_tokens / 2
    step_bytes = weight_bytes + batch * mean_context * kv_bytes_per_token
    tokens_per_s = batch / (step_bytes / (copy_gb_per_s * 1e9))
    return {
        "system": "roofline (decode)",
        "batch": batch,
        "output_tokens_per_s": tokens_per_s,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_step": batch * mean_context * kv_bytes_per_token,
    }


def _guarded(run, *args) -> dict[str, Any]:
    try:
        return run(*args)
    except torch.cuda.OutOfMemoryError:
        return {"skipped": "out of GPU memory"}
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def run_e2e(config, copy_gb_per_s: float) -> list[dict[str, Any]]:
    """All rows for config.e2e_batches; speedup and roofline share filled in per batch."""
    model = build_model(torch.device("cuda"))
    warm = _prompts(2, 32, config.seed)
    run_engine(model, warm, WARMUP_OUTPUT_TOKENS)
    run_hf(model, warm, WARMUP_OUTPUT_TOKENS)
    rows = []
    for batch in config.e2e_batches:
        prompts = _prompts(batch, config.e2e_context_len, config.seed + batch)
        engine = {
            "system": "alise engine",
            "batch": batch,
            **_guarded(run_engine, model, prompts, config.e2e_output_tokens),
        }
        hf = {
            "system": "HF generate (static)",
            "batch": batch,
            **_guarded(run_hf, model, prompts, config.e2e_output_tokens),
        }
        bound = roofline(model, batch, config.e2e_context_len, config.e2e_output_tokens, copy_gb_per_s)
        if "output_tokens_per_s" in engine and "output_tokens_per_s" in hf:
            engine["speedup_vs_hf"] = engine["output_tokens_per_s"] / hf["output_tokens_per_s"]
        if engine.get("decode_tokens_per_s"):
            engine["share_of_roofline"] = engine["decode_tokens_per_s"] / bound["output_tokens_per_s"]
        rows += [engine, hf, bound]
        print(
            f"  e2e batch {batch}: engine {engine.get('output_tokens_per_s', 0):.0f} tok/s, "
            f"HF {hf.get('output_tokens_per_s', 0):.0f} tok/s",
            flush=True,
        )
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows
