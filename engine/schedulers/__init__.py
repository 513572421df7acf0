"""Noise schedules: the flow-matching family shared by Qwen-Image, FLUX and Wan."""

from engine.schedulers.flow_match import (
    QWEN_IMAGE,
    FlowMatchConfig,
    Schedule,
    TimeShiftType,
    add_noise,
    constant_shift,
    dynamic_shift_mu,
    euler_step,
    flow_match_schedule,
    training_target,
)

__all__ = [
    "QWEN_IMAGE",
    "FlowMatchConfig",
    "Schedule",
    "TimeShiftType",
    "add_noise",
    "constant_shift",
    "dynamic_shift_mu",
    "euler_step",
    "flow_match_schedule",
    "training_target",
]
