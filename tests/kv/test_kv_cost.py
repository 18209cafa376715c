"""Restore or recompute (engine/kv/cost.py): the cheaper way to a warm prompt, from measured speeds;
and in the engine, a resume whose restore would be slower than recomputing recomputes, with the same
answer, and says so in the turn's cache report (tests/workbench/test_cli.py checks `chat --json`)."""

from __future__ import annotations

from engine.kv.cost import CostModel
from tests.kv.test_kv_memory import cold_engine, engine_for, greedy, next_turn, stored_turn  # noqa: F401, F811 - a fixture


def test_nothing_is_planned_before_both_speeds_are_measured():
    model = CostModel()
    assert model.plan("warm", 4096, 4200, 256) is None
    model.observe_prefill(4200, 4200, 0.5)
    assert model.plan("warm", 4096, 4200, 256) is None  # restore speed still unknown
    model.observe_restore("warm", 4096, 0.1)
    assert model.plan("warm", 4096, 4200, 256) is not None


def test_a_fast_restore_is_chosen_and_a_slow_one_is_not():
    fast_disk, slow_disk = CostModel(), CostModel()
    for model, restore_s in ((fast_disk, 0.05), (slow_disk, 5.0)):
        model.observe_prefill(4000, 4000, 1.0)
        model.observe_restore("warm", 4000, restore_s)
    plan = fast_disk.plan("warm", 4096, 4200, 256)
    assert (plan.decision, plan.restore_tokens) == ("restore", 4096)
    assert plan.estimate_s < fast_disk.prefill_s(0, 4200)
    plan = slow_disk.plan("warm", 4096, 4200, 256)
    assert (plan.decision, plan.restore_tokens) == ("recompute", 0)
    assert plan.estimate_s == slow_disk.prefill_s(0, 4200)


def test_a_prefix_is_restored_when_short_contexts_prefill_slowly():
    """Per-token prefill cost that falls with context (a GPU reading short prompts below its speed)
    makes reading the first blocks and prefilling the rest the cheapest."""
    model = CostModel()
    model.observe_prefill(4000, 4000, 40.0)  # 10 ms a token up to 4096
    model.observe_prefill(4000, 8100, 0.4)  # 0.1 ms a token beyond
    model.observe_restore("warm", 1000, 1.0)  # 1 ms a token
    plan = model.plan("warm", 8000, 8100, 256)
    assert plan.decision == "partial" and plan.restore_tokens % 256 == 0 and 0 < plan.restore_tokens < 8000
    others = [model.prefill_s(0, 8100), 8000 * 0.001 + model.prefill_s(8000, 8100)]
    assert plan.estimate_s < min(others)


def test_prefill_speed_is_learned_per_context_length():
    model = CostModel()
    model.observe_prefill(1000, 1000, 1.0)
    model.observe_prefill(1000, 16000, 4.0)
    assert model.prefill_s(0, 1000) == 1.0
    assert model.prefill_s(15000, 16000) == 4.0
    assert model.prefill_s(0, 10) == 0.01  # an unmeasured length: the nearest measured one's speed


def test_a_resume_that_restores_slower_than_it_recomputes_recomputes(data_dir, tmp_path, cold_engine):  # noqa: F811
    cache_dir = tmp_path / "kv"
    follow_up = next_turn(stored_turn(data_dir, cache_dir, "slow-disk"))
    expected = cold_engine.generate(greedy(follow_up)).text
    eng = engine_for(data_dir, cache_dir)
    try:

        def slow_disk(engine):
            engine.memory.cost.observe_prefill(1000, 1000, 0.001)
            engine.memory.cost.observe_restore("warm", 1000, 100.0)

        eng.call(slow_disk)
        result = eng.generate(greedy(follow_up, "slow-disk"))
        assert (result.cache.source, result.cache.decision) == ("cold", "recompute")
        assert result.usage.cached_tokens == 0 and result.cache.estimate_s > 0
        assert result.text == expected
        # Restoring is cheap again: the next turn reads its blocks.
        eng.call(lambda engine: engine.memory.cost.observe_restore("warm", 1000, 1e-9))
        again = next_turn([*follow_up, follow_up[-1]])
        assert eng.generate(greedy(again, "slow-disk")).cache.decision == "restore"
    finally:
        eng.close()


def test_speeds_are_kept_for_the_next_process_by_model_and_backend(tmp_path):
    path = tmp_path / "speeds.json"
    measured = CostModel()
    measured.observe_prefill(4000, 4000, 1.0)
    measured.observe_restore("warm", 4000, 0.2)
    measured.save(path, "model-a|cuda")
    CostModel().save(path, "model-b|cpu")
    again = CostModel.load(path, "model-a|cuda")
    assert again.plan("warm", 4096, 4200, 256) == measured.plan("warm", 4096, 4200, 256)
    assert CostModel.load(path, "model-b|cpu").plan("warm", 4096, 4200, 256) is None
    path.write_text("{not json")
    assert CostModel.load(path, "model-a|cuda").plan("warm", 4096, 4200, 256) is None
