"""FastServe-like skip-join multi-level feedback queue (a second baseline, needs no predictor).

Queue i has a quantum of BASE_QUANTUM_STEPS * 2**i decode steps. A new request skips the queues whose
quantum is shorter than its prefill (expressed in decode steps by the cost model), so a long prompt
joins lower (skip-join). It moves down one queue each time it uses up the quantum of the queue it is
in; within a queue, arrival order. A waiting request displaces a running one only from a strictly
higher queue. Levels depend only on attained service, which does not change while a request waits.
"""

from __future__ import annotations

from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.policy import PolicyName, SchedulingPolicy

BASE_QUANTUM_STEPS = 8.0  # quantum of the top queue, in decode steps
NUM_LEVELS = 8  # the last queue has no quantum limit
LEVEL_SPAN_S = 1e9  # key = level * span + arrival time: levels first, arrival order within a level


class MlfqPolicy(SchedulingPolicy):
    name = PolicyName.MLFQ
    preempts_for_waiting = True
    cost_model: OnlineStepCostModel

    def __init__(self, cost_model: OnlineStepCostModel) -> None:
        self.cost_model = cost_model

    def level(self, request: Request) -> int:
        """Queue index: skip-join by prefill cost, then demoted by decode steps attained."""
        prefill_steps = (
            self.cost_model.prefill_s_per_token * request.num_prompt_tokens / max(self.cost_model.decode_step_s, 1e-9)
        )
        level = 0
        while level < NUM_LEVELS - 1 and BASE_QUANTUM_STEPS * 2**level < prefill_steps:
            level += 1
        attained = float(request.num_output_tokens)
        while level < NUM_LEVELS - 1 and attained >= BASE_QUANTUM_STEPS * 2**level:
            attained -= BASE_QUANTUM_STEPS * 2**level
            level += 1
        return level

    def priority_key(self, request: Request) -> float:
        return self.level(request) * LEVEL_SPAN_S + request.arrival_time_s

    def displaces(self, waiting: Request, running: Request, victim_cost_s: float) -> bool:
        return self.level(waiting) < self.level(running)
