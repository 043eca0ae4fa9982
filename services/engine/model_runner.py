"""Runs one scheduled step of a Llama-family model over the paged KV cache.

The step's tokens from all requests are flattened into one sequence (no padding):

    request:    A A A A | B | C C          (A: prompt chunk, B: decode, C: prompt tail)
    positions:  0 1 2 3 | 9 | 4 5
    slots:      from each request's block table (block_pool.py)

A step: the persistent input batch (input_batch.py) turns the scheduler's chunks into index
tensors with one host-to-device copy; the fused decoder (fused_llama.py) runs them, replayed from a
CUDA graph when the step only decodes (cuda_graphs.py); logits are computed only at the last
position of requests that sample, the min_tokens hook masks stop tokens, and every row is sampled
at once on the device (sampler.py). Attention and the KV cache are ours, so batching and paging
stay under the scheduler's control.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter

import numpy as np
import torch

from services.engine.attention import AttentionMetadata
from services.engine.block_pool import KvBlockManager
from services.engine.cuda_graphs import DecodeGraphs
from services.engine.fused_llama import FusedLlama
from services.engine.input_batch import InputBatch, StepArrays
from services.engine.kernels.backend import make_attention
from services.engine.kv_cache import KvCacheShape, PagedKvCache
from services.engine.min_tokens import apply_min_tokens, model_stop_token_ids, stop_token_tensor
from services.engine.sampler import SamplingParams, greedy_argmax, sample_tokens
from services.engine.scheduler.output import SampledTokens, SchedulerOutput, StepSamples
from services.engine.spec.early_exit_drafter import EarlyExitDrafter
from services.engine.spec.verification import verify_drafts

_request_id = attrgetter("request_id")
DEFAULT_MAX_NUM_SEQS = 64  # CUDA graph batch sizes are captured up to this many decodes


class ModelRunner:
    """Owns the model and the KV cache tensors; called only from the engine thread."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv: KvBlockManager,
        num_blocks: int,
        *,
        enforce_eager: bool = False,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        max_model_len: int = 0,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        config = model.config
        self.model = model
        self.kv = kv
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.cache_shape = KvCacheShape(
            config.num_hidden_layers, num_blocks, kv.block_size, self.num_kv_heads, self.head_dim
        )
        # kv_dtype: the pool's element type (kv_cache.kv_torch_dtype); None = the model's dtype.
        self.cache = PagedKvCache(self.cache_shape, kv_dtype or self.dtype, self.device)
        # Our varlen CUDA kernel where it loads (kernels/backend.py), else the torch reference.
        self.attention = make_attention(
            self.device, self.dtype, self.head_dim, kv.block_size, self.num_heads, self.num_kv_heads, self.cache.dtype
        )
        self.stop_token_ids = stop_token_tensor(model_stop_token_ids(model), self.device)  # min_tokens.py
        self.decoder = FusedLlama(model, self.num_heads, self.num_kv_heads, self.head_dim)
        self.batch = InputBatch(kv.block_size, self.device)
        max_model_len = max_model_len or config.max_position_embeddings
        # None on CPU and with enforce_eager: every step runs eagerly.
        self.graphs = DecodeGraphs.create(self, max_num_seqs, max_model_len, enforce_eager)
        # Makes the drafts of verify chunks inside the step (--speculative early-exit); None otherwise.
        self.early_exit: EarlyExitDrafter | None = None
        # The input batch's rows array of the last step whose every sampling row was greedy without min_tokens:
        # while the same array comes back (no row added, removed or reassigned), sampling is one argmax.
        self._argmax_rows: np.ndarray | None = None

    def forget(self, request_id: str) -> None:
        """Drops the request's row once it finished or was aborted (or lost its KV)."""
        self.batch.remove(request_id)

    def execute(self, step: SchedulerOutput) -> Mapping[str, int]:
        """Runs a step without drafts; returns the sampled token of each request that samples this step
        (execute_step enters inference mode: once per step, not twice)."""
        return self.execute_step(step).tokens

    @torch.inference_mode()
    def execute_step(self, step: SchedulerOutput) -> StepSamples:
        """Runs the step: early-exit drafts first where the runner makes them, then one forward over every
        chunk (verify chunks feed their drafts), then sampling and verification."""
        if self.early_exit is not None:
            self.early_exit.draft(self, step)
        arrays = self.prepare_arrays(step)
        hidden = self.run_model(arrays)
        if not arrays.sample_indices:
            return StepSamples({})
        # Only tail chunks verify drafts (decode columns never do): no verify, no chunk list needed.
        verify = [i for i in arrays.sample_indices if step.chunks[i].num_draft_tokens] if step.num_draft_tokens else []
        if not verify:
            return StepSamples(self.sample(step, arrays, self.logits_of(arrays, hidden)))
        return self._sample_and_verify(step, arrays, hidden, verify)

    def logits_of(self, arrays: StepArrays, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits [num_sampling_rows, vocab] at the last position of each sampling request."""
        every_row_samples = len(arrays.sample_indices) == len(arrays.seq_lens_host)
        if every_row_samples and arrays.max_query_len == 1:  # decodes only: hidden's rows are the last positions
            return self.decoder.lm_head(hidden)
        if every_row_samples:  # no host list
            last_rows = arrays.query_start_loc[1:] - 1
        else:
            starts = arrays.query_start_loc_host
            last_rows = torch.tensor([starts[index + 1] - 1 for index in arrays.sample_indices]).to(self.device)
        return self.decoder.lm_head(hidden.index_select(0, last_rows))

    def sample(self, step: SchedulerOutput, arrays: StepArrays, logits: torch.Tensor) -> Mapping[str, int]:
        """min_tokens masking, then every row sampled at once; the tokens are recorded in the batch rows.

        Host cost per row is one list entry: the decode columns' tokens stay a list (SampledTokens), the
        per-request lists are built only when a row needs them (min_tokens or a sampled row), decided
        from the batch rows' arrays."""
        decodes = step.decodes
        if decodes is not None and not step.tail:  # the steady decode step: every request samples, in order
            return SampledTokens(decodes.request_ids, self._sample_rows(arrays, logits, decodes.requests, None), {})
        requests = [chunk.request for chunk in step.tail]
        if decodes is not None:
            requests = decodes.requests + requests
        if len(arrays.sample_indices) != len(requests):  # not every request samples (a partial prefill)
            requests = [requests[index] for index in arrays.sample_indices]
        tokens = self._sample_rows(arrays, logits, requests, None)
        if decodes is None:
            return dict(zip(map(_request_id, requests), tokens))
        num_decodes = len(decodes)  # every decode samples, and they come first
        others = dict(zip(map(_request_id, requests[num_decodes:]), tokens[num_decodes:]))
        return SampledTokens(decodes.request_ids, tokens[:num_decodes], others)

    def _sample_rows(
        self, arrays: StepArrays, logits: torch.Tensor, requests: list, picked: np.ndarray | None
    ) -> list[int]:
        """Samples the given requests' rows (all sampling rows, or the `picked` mask of them) and records
        the tokens in the batch rows; the tokens in the same order."""
        rows = arrays.sample_rows if picked is None else arrays.sample_rows[picked]
        if rows is self._argmax_rows:  # the same rows as a step that found them all greedy without min_tokens
            host = greedy_argmax(logits)
        else:
            min_tokens = self.batch.min_tokens[rows].any()
            if min_tokens:
                logits = apply_min_tokens(logits, requests, self.stop_token_ids)
            params = self.sampling_params(rows, requests)
            host = sample_tokens(logits, params).cpu().numpy()
            if picked is None and not min_tokens and not params.temperature.any():
                self._argmax_rows = rows  # a row's parameters are fixed while it keeps its row (input_batch.py)
        tokens = host.tolist()  # one host copy for both: the scheduler's list and the batch rows' array
        self.batch.record_sampled(arrays, host, picked)
        return tokens

    def _sample_and_verify(
        self, step: SchedulerOutput, arrays: StepArrays, hidden: torch.Tensor, verify: list[int]
    ) -> StepSamples:
        """A step with verify chunks: one LM-head call over the plain rows' last positions and every
        verify chunk's last num_draft_tokens + 1 positions, then plain sampling and verification
        (spec/verification.py). The speculator drafts only for requests past their min_tokens, so
        verify rows need no masking."""
        chunks, starts = step.chunks, arrays.query_start_loc_host
        picked = np.array([chunks[index].num_draft_tokens == 0 for index in arrays.sample_indices])
        plain = [index for index in arrays.sample_indices if not chunks[index].num_draft_tokens]
        positions = [starts[index + 1] - 1 for index in plain]
        for index in verify:
            positions.extend(range(starts[index + 1] - 1 - chunks[index].num_draft_tokens, starts[index + 1]))
        logits = self.model.lm_head(hidden.index_select(0, torch.tensor(positions, device=self.device)))
        tokens: dict[str, int] = {}
        if plain:
            requests = [chunks[index].request for index in plain]
            tokens = dict(
                zip(map(_request_id, requests), self._sample_rows(arrays, logits[: len(plain)], requests, picked))
            )
        return StepSamples(tokens, self._verify(step, arrays, logits[len(plain) :], verify, ~picked))

    def _verify(
        self, step: SchedulerOutput, arrays: StepArrays, logits: torch.Tensor, verify: list[int], picked: np.ndarray
    ) -> dict[str, list[int]]:
        """Accepted drafts + one token per verify chunk; appended to the rows."""
        requests = [step.chunks[index].request for index in verify]
        drafts = [
            request.draft_token_ids[: step.chunks[index].num_draft_tokens] for index, request in zip(verify, requests)
        ]  # type: ignore[index]
        rows = arrays.sample_rows[picked]
        batch = self.batch
        counters = np.fromiter((request.num_output_tokens for request in requests), np.int64, len(requests))
        new_tokens = verify_drafts(
            logits, drafts, batch.temperature[rows], batch.top_p[rows], batch.top_k[rows], batch.seed[rows], counters
        )
        for row, appended in zip(rows.tolist(), new_tokens, strict=True):
            batch.append_tokens(row, appended)
        return {request.request_id: appended for request, appended in zip(requests, new_tokens, strict=True)}

    def prepare_arrays(self, step: SchedulerOutput) -> StepArrays:
        """Builds the step's inputs (idempotent: preparing the same step twice gives the same arrays).
        The engine core forgets the rows of requests preempted this step; a row it missed is still
        replaced, since prepare() gives a request preempted since its row was filled a fresh one."""
        return self.batch.prepare(step.tail, self.kv.block_table, step.decodes)

    def _prepare(self, step: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """(input ids, positions, metadata) of a step, for tests that run one step through two backends."""
        arrays = self.prepare_arrays(step)
        return arrays.input_ids, arrays.positions, self.metadata_of(arrays)

    def run_model(self, arrays: StepArrays) -> torch.Tensor:
        """Hidden states [num_tokens, hidden]: a graph replay for decode-only steps, else eager."""
        if self.graphs is not None:
            hidden = self.graphs.run(arrays)
            if hidden is not None:
                return hidden
        return self.forward(arrays.input_ids, arrays.positions, self.metadata_of(arrays))

    def metadata_of(self, arrays: StepArrays) -> AttentionMetadata:
        metadata = AttentionMetadata(
            slot_mapping=arrays.slot_mapping,
            query_start_loc=arrays.query_start_loc,
            seq_lens=arrays.seq_lens,
            block_tables=arrays.block_tables,
            query_start_loc_host=arrays.query_start_loc_host,
            seq_lens_host=arrays.seq_lens_host,
            max_query_len=arrays.max_query_len,
            max_seq_len=arrays.max_seq_len,
        )
        return self.attention.prepare(metadata)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """The eager forward (also what a CUDA graph captures)."""
        return self.decoder.forward(input_ids, positions, metadata, self.attention, self.cache, self.scale)

    _forward = forward  # the name tests/kernel_cases.py calls

    def sampling_params(self, rows: np.ndarray, requests) -> SamplingParams:
        """The sampling rows' parameters, gathered from the batch rows; the draw counter of a row is
        its request's number of output tokens so far (see sampler.py on reproducibility)."""
        batch = self.batch
        temperature = batch.temperature[rows]
        if not temperature.any():  # all greedy: no draws needed
            return SamplingParams(temperature, batch.top_p[rows], batch.top_k[rows], np.zeros(len(rows), np.float32))
        counters = np.fromiter((request.num_output_tokens for request in requests), np.int64, len(requests))
        return SamplingParams.of(temperature, batch.top_p[rows], batch.top_k[rows], batch.seed[rows], counters)
