import pytest

from engine.errors import SettingsError
from engine.training.config import LrSchedule, TimestepSampling, TrainConfig


def test_strings_become_enums_when_valid():
    config = TrainConfig(steps=10, timestep_sampling="shifted_uniform", lr_schedule="cosine")
    assert config.timestep_sampling is TimestepSampling.SHIFTED_UNIFORM
    assert config.lr_schedule is LrSchedule.COSINE
    assert config.to_dict()["timestep_sampling"] == "shifted_uniform"


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch_size", 2.5), ("learning_rate", 0.0), ("caption_dropout", 1.0), ("ema_decay", 1.0),
    ("timestep_sampling", "sometimes"), ("logit_std", -1.0), ("mixed_precision", "fp8"), ("warmup_steps", -1),
])
def test_error_names_the_field_when_a_value_is_out_of_range(field, value):
    with pytest.raises(SettingsError, match=f"TrainConfig.{field}"):
        TrainConfig(**{"steps": 10, field: value})
