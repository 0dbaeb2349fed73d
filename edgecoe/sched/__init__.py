"""Scheduling: policies (chosen by name), cost model, presets."""

from edgecoe.sched.cost import CostModel
from edgecoe.sched.policies import (
    SCHEDULERS,
    CoserveQueue,
    EdgecoeQueue,
    FcfsQueue,
    RoundRobinQueue,
    SchedulingPolicy,
    create_scheduler,
)
from edgecoe.sched.presets import PRESETS, Preset, get_preset
from edgecoe.sched.types import Batch, ExecutorInfo, Task

__all__ = [
    "PRESETS",
    "SCHEDULERS",
    "Batch",
    "CoserveQueue",
    "CostModel",
    "EdgecoeQueue",
    "ExecutorInfo",
    "FcfsQueue",
    "Preset",
    "RoundRobinQueue",
    "SchedulingPolicy",
    "Task",
    "create_scheduler",
    "get_preset",
]
