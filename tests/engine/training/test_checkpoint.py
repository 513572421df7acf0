import torch

from engine.training import checkpoint


def _optimizer_state():
    parameter = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    parameter.grad = torch.ones(3)
    optimizer.step()
    return optimizer.state_dict()


def test_saved_checkpoint_reads_back_weights_optimizer_and_state(tmp_path):
    weights = {"layer.weight": torch.randn(4, 4)}
    optimizer = _optimizer_state()
    checkpoint.save(tmp_path, 7, {"model": weights}, optimizer, {"note": [1, 2]})
    loaded = checkpoint.load(checkpoint.latest(tmp_path))
    assert loaded.step == 7 and loaded.state == {"note": [1, 2]}
    assert torch.equal(loaded.modules["model"]["layer.weight"], weights["layer.weight"])
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], optimizer["state"][0]["exp_avg"])
    assert loaded.optimizer["param_groups"][0]["lr"] == optimizer["param_groups"][0]["lr"]
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    restored.load_state_dict(loaded.optimizer)
    assert list(restored.param_groups[0]["betas"]) == [0.9, 0.999]


def test_rng_state_is_restored_when_a_checkpoint_is_loaded(tmp_path):
    torch.manual_seed(3)
    checkpoint.save(tmp_path, 1, {"model": {}})
    expected = torch.rand(5)
    torch.rand(100)
    checkpoint.load(checkpoint.latest(tmp_path))
    assert torch.equal(torch.rand(5), expected)


def test_unfinished_folders_are_ignored_and_only_the_newest_are_kept(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, step, {"model": {"w": torch.zeros(1)}}, keep=2)
    (tmp_path / "step-0000040.tmp").mkdir()  # a write that was killed half-way
    (tmp_path / "step-0000050").mkdir()  # renamed folders always hold state.json; this one does not count
    assert [step for step, _ in checkpoint.checkpoints(tmp_path)] == [20, 30]
    assert checkpoint.latest(tmp_path).name == "step-0000030"
