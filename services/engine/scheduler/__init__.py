"""Iteration-level scheduling: which requests run this step, with how many tokens, who waits.

Plain Python with no torch import, so the same code drives the real engine and the
discrete-event simulator (services/bench/sim), and is unit-tested on CPU with fake model outputs.
"""

from services.engine.scheduler.cost_model import OnlineStepCostModel, StepCostCoefficients
from services.engine.scheduler.limits import SchedulerLimits
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput, StepResult
from services.engine.scheduler.policy import DEFAULT_POLICY, POLICY_NAMES, FcfsPolicy, SchedulingPolicy, make_policy
from services.engine.scheduler.scheduler import Scheduler

__all__ = [
    "DEFAULT_POLICY",
    "FcfsPolicy",
    "OnlineStepCostModel",
    "POLICY_NAMES",
    "StepCostCoefficients",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerLimits",
    "SchedulerOutput",
    "SchedulingPolicy",
    "StepResult",
    "make_policy",
]
