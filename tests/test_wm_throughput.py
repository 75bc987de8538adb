"""The speed benchmark's bookkeeping (interleaving, medians, speedup, the same-losses comparison), its child's
batch, phase wrappers and equivalence check, the baseline worktree's clean-up, and gpu_check.sh without CUDA.
Nothing here asserts a duration."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import speed_child
from benchmarks.wm_throughput import (
    LOSS_RTOL,
    ROOT,
    baseline_worktree,
    compare,
    encoder_ratios,
    equivalence,
    interleave,
    run_in_child,
)

SMALL = {"preset": "debug", "device": "cpu", "obs": "state", "action_dim": 1, "batch": 2, "length": 4,
         "encoder": "patch", "decoder": "cnn", "threads": 1, "warmup": 0, "repeats": 1, "overrides": [],
         "phase_repeats": 1}


def fake_children(medians: dict[str, list[float | None]]):
    """A child runner that returns the next of ``medians[side]`` (None: a failed child) and logs the calls."""
    calls: list[str] = []

    def run(spec, root):
        side = str(root)
        median = medians[side][sum(c == side for c in calls)]
        calls.append(side)
        if median is None:
            return {"error": "child exited with 1: boom"}
        return {"agent_update": {"median_s": median, "min_s": median / 2, "max_s": median * 2, "n": 3},
                "peak_rss_mb": 100.0 * median, "param_counts": {"total": 7}, "wall_s": 1.0, "torch_threads": 1,
                "phases": {"median_s": {"world_model": median / 2, "total": median}}}

    return run, calls


def test_rounds_alternate_sides_and_speedup_is_baseline_over_current():
    run, calls = fake_children({"current": [2.0, 4.0, 3.0], "baseline": [3.0, 6.0, 6.0]})
    rounds = interleave([SMALL], {"current": Path("current"), "baseline": Path("baseline")}, 3, run_child=run)[0]
    assert calls == ["current", "baseline", "baseline", "current", "current", "baseline"]
    assert [r["order"] for r in rounds] == [["current", "baseline"], ["baseline", "current"], ["current", "baseline"]]
    out = compare(rounds)
    assert out["agent_update"]["median_s"] == 3.0 and out["baseline"]["agent_update"]["median_s"] == 6.0
    assert out["agent_update"]["round_medians_s"] == [2.0, 4.0, 3.0]
    assert out["agent_update"]["min_s"] == 1.0 and out["agent_update"]["max_s"] == 8.0
    assert out["agent_update"]["n"] == 9
    assert out["speedup"] == 2.0 and out["speedup_per_round"] == [1.5, 1.5, 2.0]
    assert out["peak_rss_mb"] == 400.0 and out["baseline"]["peak_rss_mb"] == 600.0
    assert out["phases_s"] == {"world_model": 1.5, "total": 3.0}
    assert out["param_counts"] == {"total": 7} and "param_counts" not in out["rounds"][0]["current"]
    assert out["torch_threads"] == 1


def test_failed_children_are_listed_and_left_out_of_the_medians():
    run, _ = fake_children({"current": [2.0, 4.0], "baseline": [None, 8.0]})
    out = compare(interleave([SMALL], {"current": Path("current"), "baseline": Path("baseline")}, 2, run_child=run)[0])
    assert out["baseline"]["errors"] == ["child exited with 1: boom"]
    assert out["baseline"]["agent_update"]["median_s"] == 8.0 and out["speedup"] == 8.0 / 3.0
    assert out["speedup_per_round"] == [None, 2.0]

    run, _ = fake_children({"current": [2.0], "baseline": [None]})
    out = compare(interleave([SMALL], {"current": Path("current"), "baseline": Path("baseline")}, 1, run_child=run)[0])
    assert out["speedup"] is None and "agent_update" not in out["baseline"]


def test_without_a_baseline_there_is_no_speedup():
    run, calls = fake_children({"current": [2.0, 5.0]})
    out = compare(interleave([SMALL], {"current": Path("current")}, 2, run_child=run)[0])
    assert calls == ["current", "current"] and out["agent_update"]["median_s"] == 3.5
    assert "baseline" not in out and "speedup" not in out


def test_configurations_alternate_too_and_the_encoder_ratio_is_taken_round_by_round():
    """Two encoders timed in one run: each round runs both (the order reverses every round), and the patch to
    CNN ratio is the median of the per-round ratios, so a machine that slows between rounds does not bias it."""
    calls = []
    # round 2 is twice as slow for everyone: a ratio of the two encoders' overall medians would mix rounds
    times = {"patch": [1.2, 2.4, 1.3], "cnn": [1.0, 2.0, 1.0]}

    def run(spec, root):
        r = sum(c[0] == spec["encoder"] and c[1] == str(root) for c in calls)
        calls.append((spec["encoder"], str(root)))
        t = times[spec["encoder"]][r] * (2.0 if str(root) == "baseline" else 1.0)
        return {"agent_update": {"median_s": t, "min_s": t, "max_s": t, "n": 1}, "peak_rss_mb": 1.0,
                "wall_s": 1.0, "phases": {"median_s": {"world_model": t / 2}}}

    specs = [{**SMALL, "obs": "pixels", "encoder": e} for e in ("patch", "cnn")]
    saved = []
    per_spec = interleave(specs, {"current": Path("current"), "baseline": Path("baseline")}, 3, run_child=run,
                          after_round=lambda done: saved.append([len(r) for r in done]))
    assert calls == [("patch", "current"), ("patch", "baseline"), ("cnn", "current"), ("cnn", "baseline"),
                     ("cnn", "baseline"), ("cnn", "current"), ("patch", "baseline"), ("patch", "current"),
                     ("patch", "current"), ("patch", "baseline"), ("cnn", "current"), ("cnn", "baseline")]
    assert saved == [[1, 1], [2, 2], [3, 3]]
    results = [{**spec, **compare(rounds)} for spec, rounds in zip(specs, per_spec)]
    [ratio] = encoder_ratios(results)
    assert ratio["world_model_phase_per_round"] == pytest.approx([1.2, 1.2, 1.3])
    assert ratio["world_model_phase"] == pytest.approx(1.2) and ratio["agent_update"] == pytest.approx(1.2)
    assert ratio["preset"] == "debug" and encoder_ratios(results[:1]) == []
    other = [{**r, "preset": "cpu"} for r in results]  # a second preset: one ratio each, never across presets
    assert [r["preset"] for r in encoder_ratios(results + other[:1])] == ["debug"]
    assert [r["preset"] for r in encoder_ratios(results + other)] == ["debug", "cpu"]


def _pixel_child(t, phases=True):
    child = {"agent_update": {"median_s": t, "min_s": t, "max_s": t, "n": 1}, "peak_rss_mb": 1.0, "wall_s": 1.0,
             "param_counts": {"total": 7}}
    return {**child, "phases": {"median_s": {"world_model": t / 2}}} if phases else child


def test_encoder_ratios_skip_failed_rounds_and_never_pair_other_devices_or_decoders():
    def result(encoder, times, device="cpu", decoder="cnn"):
        rounds = [{"round": r, "order": ["current"], "current": _pixel_child(t) if t else {"error": "boom"}}
                  for r, t in enumerate(times)]
        return {**SMALL, "obs": "pixels", "encoder": encoder, "device": device, "decoder": decoder,
                "rounds": rounds}

    # round 2's patch child failed: that round is left out, the others still pair by round
    [ratio] = encoder_ratios([result("patch", [1.2, None, 1.5]), result("cnn", [1.0, 1.0, 1.0])])
    assert ratio["world_model_phase_per_round"] == pytest.approx([1.2, 1.5])
    assert (ratio["device"], ratio["decoder"]) == ("cpu", "cnn")
    mixed = [result("patch", [1.2], device="cuda"), result("cnn", [1.0]), result("patch", [2.0], decoder="patch"),
             result("cnn", [1.0], decoder="patch")]
    assert [(r["device"], r["decoder"]) for r in encoder_ratios(mixed)] == [("cpu", "patch")]


def test_run_specs_saves_per_round_keeps_older_ratios_and_runs_world_model_and_rssm_specs(tmp_path, monkeypatch):
    """The command's driver with stand-in children: world-model and RSSM-loop specs (no encoder ratio, the
    latter without a decoder) and, with --append, agent specs whose ratio replaces only its own group's."""
    import argparse

    from benchmarks import wm_throughput as wt

    out = tmp_path / "speed.json"
    monkeypatch.setattr(wt, "run_in_child", lambda spec, root: {"mode": spec["mode"], "error": "stand-in"})
    args = argparse.Namespace(agent=False, out=str(out), baseline=None, rounds=1, profile=False, append=False)
    specs = [{"mode": "update", "preset": "debug", "device": "cpu", "encoder": "patch", "decoder": "cnn"},
             {"mode": "rssm_loop", "preset": "debug", "device": "cpu"}]
    wt._run_specs(args, specs, {"results": []})
    saved = json.loads(out.read_text())
    assert [r["mode"] for r in saved["results"]] == ["update", "rssm_loop"] and "encoder_ratio" not in saved

    times = {"patch": 1.2, "cnn": 1.0}
    monkeypatch.setattr(wt, "run_in_child", lambda spec, root: _pixel_child(times[spec["encoder"]]))
    old = [{"preset": "cpu", "batch": 2, "length": 4, "decoder": "cnn", "device": "cpu", "world_model_phase": 9.0},
           {"preset": "12m", "batch": 2, "length": 4, "decoder": "cnn", "device": "cpu", "world_model_phase": 8.0}]
    report = {"results": [{"kept": True}], "encoder_ratio": old, "code": {"commit": "abc"}}
    args = argparse.Namespace(agent=True, out=str(out), baseline=None, rounds=2, profile=False, append=True)
    specs = [{**SMALL, "mode": "agent_update", "preset": "cpu", "obs": "pixels", "encoder": e, "check_updates": 0}
             for e in ("patch", "cnn")]
    wt._run_specs(args, specs, report)
    saved = json.loads(out.read_text())
    assert saved["results"][0] == {"kept": True} and len(saved["results"]) == 3
    ratios = {r["preset"]: r for r in saved["encoder_ratio"]}
    assert ratios["12m"]["world_model_phase"] == 8.0  # not measured again: kept
    assert ratios["cpu"]["world_model_phase"] == pytest.approx(1.2) and ratios["cpu"]["commit"] == "abc"


CHECKED = [{"train/loss/reward": 2.0, "train/loss/actor": -3e-9, "imagine/return": 0.5, "train/kl": 1.0},
           {"train/loss/reward": 1.5, "train/loss/actor": -1e-9, "imagine/return": 0.25, "train/kl": 0.8}]


def _with(metrics: list[dict[str, float]], update: int, **changes: float) -> list[dict[str, float]]:
    out = [dict(m) for m in metrics]
    out[update].update({k.replace("__", "/"): v for k, v in changes.items()})
    return out


def test_identical_check_metrics_are_the_same_losses():
    eq = equivalence(CHECKED, [dict(m) for m in CHECKED])
    assert eq["same_losses"] is True and eq["updates"] == 2 and eq["keys_compared"] == 4
    assert eq["max_rel_diff"] == 0.0 and eq["first_update_max_rel_diff"] == 0.0 and eq["losses_differing"] == []
    assert eq["only_in_current"] == [] and eq["only_in_baseline"] == [] and eq["losses_compared"] == 2
    assert eq["tolerance"]["rtol"] == LOSS_RTOL and eq["tolerance"]["updates_judged"] == "first"


def test_a_differing_first_update_loss_is_not_the_same_losses():
    eq = equivalence(_with(CHECKED, 0, train__loss__reward=2.02), CHECKED)  # 1% off
    assert eq["same_losses"] is False and eq["losses_differing"] == ["train/loss/reward"]
    assert eq["worst_key"] == "train/loss/reward"
    assert eq["per_key"]["train/loss/reward"]["first_update_abs_diff"] == pytest.approx(0.02)
    assert eq["per_key"]["train/loss/reward"]["max_rel_diff"] == pytest.approx(0.02 / 2.02)
    assert eq["per_key"]["train/loss/reward"]["first_update"] == [2.02, 2.0]
    # A non-loss metric off by as much does not decide the verdict, but is reported.
    eq = equivalence(_with(CHECKED, 0, train__kl=1.5), CHECKED)
    assert eq["same_losses"] is True and eq["worst_key"] == "train/kl" and eq["first_update_max_rel_diff"] > 0.3
    # NaN against a number differs; NaN on both sides agrees.
    assert equivalence(_with(CHECKED, 0, train__loss__reward=float("nan")), CHECKED)["same_losses"] is False
    nan = _with(CHECKED, 0, train__loss__reward=float("nan"))
    assert equivalence(nan, nan)["same_losses"] is True


def test_only_the_first_update_is_judged_and_near_zero_losses_have_an_absolute_floor():
    # Within rtol at update 1 (and the actor loss, ~1e-9, within the absolute floor), 10% off at update 2.
    current = _with(_with(CHECKED, 0, train__loss__reward=2.0002, train__loss__actor=-8e-9), 1,
                    train__loss__reward=1.65)
    eq = equivalence(current, CHECKED)
    assert eq["same_losses"] is True
    assert eq["first_update_max_rel_diff"] == pytest.approx(5 / 8)  # the actor loss: 5e-9 of 8e-9
    assert eq["per_key"]["train/loss/reward"]["first_update_rel_diff"] == pytest.approx(1e-4, rel=1e-3)
    assert eq["per_key"]["train/loss/reward"]["max_rel_diff"] == pytest.approx(0.15 / 1.65)
    assert eq["max_rel_diff"] == pytest.approx(5 / 8) and eq["worst_key"] == "train/loss/actor"


def test_keys_on_one_side_only_are_listed_not_compared():
    current = [{**m, "train/loss/new": 1.0} for m in CHECKED]
    baseline = [{k: v for k, v in m.items() if k != "imagine/return"} | {"train/old": 3.0} for m in CHECKED]
    eq = equivalence(current, baseline[:1])  # and the baseline ran one update only
    assert eq["updates"] == 1 and eq["keys_compared"] == 3 and set(eq["per_key"]) == {
        "train/loss/reward", "train/loss/actor", "train/kl"}
    assert eq["only_in_current"] == ["imagine/return", "train/loss/new"] and eq["only_in_baseline"] == ["train/old"]
    assert eq["same_losses"] is True and eq["losses_compared"] == 2
    # No loss key on both sides: nothing shows the losses are the same.
    assert equivalence([{"train/loss/a": 1.0}], [{"train/loss/b": 1.0}])["same_losses"] is False


def checking_children(metrics: dict[str, list[dict[str, float]] | None]):
    """Fake children that time like `fake_children` and return ``metrics[side]`` as their check when the spec
    asks for one (None: the child fails); logs (side, check_updates) per call."""
    calls: list[tuple[str, int]] = []

    def run(spec, root):
        side = str(root)
        calls.append((side, spec.get("check_updates", 3)))
        if metrics[side] is None:
            return {"error": "child exited with 1: boom"}
        child = {"agent_update": {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "n": 1}, "peak_rss_mb": 1.0,
                 "wall_s": 1.0}
        return {**child, "check_metrics": metrics[side]} if spec.get("check_updates", 3) > 0 else child

    return run, calls


def test_only_the_first_round_checks_and_the_result_carries_the_verdict():
    sides = {"current": Path("current"), "baseline": Path("baseline")}
    run, calls = checking_children({"current": CHECKED, "baseline": _with(CHECKED, 0, train__loss__reward=3.0)})
    out = compare(interleave([{**SMALL, "check_updates": 2}], sides, 3, run_child=run)[0])
    assert calls == [("current", 2), ("baseline", 2), ("baseline", 0), ("current", 0), ("current", 0),
                     ("baseline", 0)]
    assert out["same_losses"] is False and out["equivalence"]["losses_differing"] == ["train/loss/reward"]
    assert out["check_metrics"] == CHECKED and out["baseline"]["check_metrics"][0]["train/loss/reward"] == 3.0
    assert all("check_metrics" not in r[side] for r in out["rounds"] for side in sides)

    run, _ = checking_children({"current": CHECKED, "baseline": None})  # the baseline's child failed
    out = compare(interleave([SMALL], sides, 1, run_child=run)[0])
    assert out["same_losses"] is None and out["equivalence"] == {"error": "no check_metrics from baseline"}

    run, _ = checking_children({"current": CHECKED, "baseline": CHECKED})
    out = compare(interleave([{**SMALL, "check_updates": 0}], sides, 1, run_child=run)[0], check=False)
    assert "equivalence" not in out and "same_losses" not in out


@pytest.mark.slow
def test_the_check_of_a_real_child_is_deterministic():
    """Two runs of the same code give identical check metrics: a difference against a baseline is the code's."""
    spec = {**SMALL, "length": 8, "warmup": 0, "phase_repeats": 0, "check_updates": 2}
    first, second = run_in_child(spec, ROOT), run_in_child(spec, ROOT)
    assert "error" not in first, first.get("error")
    assert len(first["check_metrics"]) == 2 and first["check_metrics"] == second["check_metrics"]
    assert {"train/loss/reward", "train/loss/actor", "train/loss/critic"} <= set(first["check_metrics"][0])
    # Distinct batches (and a changed model): the second update's losses are not the first's.
    assert first["check_metrics"][0]["train/loss/reward"] != first["check_metrics"][1]["train/loss/reward"]
    eq = equivalence(first["check_metrics"], second["check_metrics"])
    assert eq["same_losses"] is True and eq["max_rel_diff"] == 0.0 and eq["keys_compared"] >= 10


@pytest.mark.parametrize("obs,key,shape,dtype", [("state", "state", (3, 5, 5), np.float32),
                                                 ("pixels", "image", (3, 5, 64, 64, 3), np.uint8)])
def test_batch_is_what_the_loop_hands_the_agent(obs, key, shape, dtype):
    batch = speed_child.make_batch(obs, 3, 5, 2)
    assert batch[key].shape == shape and batch[key].dtype == dtype
    assert batch["action"].shape == (3, 5, 2) and batch["action"].dtype == np.float32
    assert np.abs(batch["action"]).max() <= 1.0
    assert batch["reward"].shape == (3, 5) and batch["reward"].dtype == np.float32
    for flag in ("is_first", "is_last", "is_terminal"):
        assert batch[flag].shape == (3, 5) and batch[flag].dtype == bool
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    assert set(speed_child.obs_space(obs).spaces) == {key}


def test_phase_timers_see_every_phase_of_a_real_update_and_are_removed_after():

    spec = {**SMALL, "overrides": ["actor_critic.replay_value=0.3"]}  # so that replay_value_loss runs too
    agent = speed_child.build_agent(spec)
    totals: dict[str, float] = {}
    with speed_child.phase_timers(agent, torch.device("cpu"), totals):
        assert "imagine" in vars(agent) and "train_step" in vars(agent.wm)
        agent.train_step(speed_child.make_batch("state", 2, 4, 1))
    assert set(totals) == {name for name, _, _ in speed_child.PHASES}
    assert "imagine" not in vars(agent) and "train_step" not in vars(agent.wm) and "update" not in vars(agent.ac)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_baseline_worktree_is_removed_even_on_error():
    with pytest.raises(RuntimeError):
        with baseline_worktree("HEAD") as (tree, commit):
            assert (tree / "agent" / "agent.py").exists() and len(commit) == 40
            raise RuntimeError("a failing benchmark")
    assert not tree.exists() and not tree.parent.exists()
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert str(tree) not in listed


@pytest.mark.slow
def test_child_imports_agent_from_the_tree_it_is_given(tmp_path):
    result = run_in_child(SMALL, ROOT)
    assert result["agent_file"] == str(ROOT / "agent" / "__init__.py")
    assert result["agent_update"]["n"] == 1 and result["peak_rss_mb"] > 0
    assert {"world_model", "imagine", "total", "other"} <= set(result["phases"]["median_s"])
    # A tree without `agent`: the child would import another copy, and must refuse rather than time it.
    wrong = run_in_child(SMALL, tmp_path)
    assert "error" in wrong and "not from the tree" in wrong["error"]


def _gpu_check(tmp_path: Path, python: str, only: str = "bench train", **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "GPU_CHECK_ONLY": only, "OUT": "",
           "GPU_CHECK_RESULT": str(tmp_path / "gpu_check.json"), "GPU_CHECK_PARTS": str(tmp_path / "parts"),
           "GPU_CHECK_LOGDIR": str(tmp_path / "run"), **extra}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    proc = _gpu_check(tmp_path, sys.executable)
    assert proc.returncode == 0
    assert proc.stdout.strip().count("\n") == 0 and "no CUDA" in proc.stdout
    assert not (tmp_path / "gpu_check.json").exists() and not (tmp_path / "parts").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks a failing step")
def test_gpu_check_records_a_failed_step_and_goes_on(tmp_path):
    """A Python that claims CUDA for the detection only: nvidia-smi is missing here, so that step fails,
    and the merge still writes the results file with the failure in it."""
    proc = _gpu_check(tmp_path, str(_fake_cuda_python(tmp_path)), only="none")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["steps"]["nvidia_smi"]["rc"] == 127 and not result["steps"]["nvidia_smi"]["ok"]
    assert "gpu" not in result and result["throughput"] == {} and "train" not in result


def _fake_cuda_python(tmp_path: Path) -> Path:
    """A Python that claims CUDA for gpu_check's detection only and is the real one otherwise."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\nif [ "$1" = "-c" ] && [[ "$2" == *cuda.is_available* ]]; then echo True; '
                    f'exit 0; fi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a machine without the NVIDIA driver")
def test_gpu_check_skips_steps_past_its_budget_and_merges_an_earlier_calls_run(tmp_path):
    """A step with too little budget left does not run and drops its stale parts; the parts of a step this
    call did not ask for (an earlier call's training run) are merged, its episodes read from metrics.jsonl
    even with a line cut off by a kill."""
    parts, run = tmp_path / "parts", tmp_path / "run"
    parts.mkdir()
    run.mkdir()
    (parts / "train.step").write_text("124\n100.0\n160.0\npython3 -m agent train --logdir run\n")
    (parts / "train.log").write_text("parameters: 1\n")
    (parts / "bench_bf16.step").write_text("0\n0\n1\nstale\n")  # an earlier call's, asked for again below
    rows = [{"step": 1000, "episode/return": 5.0}, {"step": 1500, "fps/env": 9.0},
            {"step": 2000, "episode/return": 7.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 25')
    proc = _gpu_check(tmp_path, str(_fake_cuda_python(tmp_path)), only="bf16", GPU_CHECK_BUDGET="40")
    assert proc.returncode == 0, proc.stderr
    assert "bench_bf16 skipped" in proc.stdout + proc.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "bench_bf16" not in result["steps"] and result["throughput"] == {}
    assert result["train"]["episodes"] == [[1000, 5.0], [2000, 7.0]] and result["train"]["rc"] == 124


def test_one_cpu_thread_is_timed_in_process_cpu_time():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert speed_child.clock(torch.device("cpu"))[0] == "process_cpu"
        torch.set_num_threads(2)
        assert speed_child.clock(torch.device("cpu"))[0] == "wall"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_world_model_child_times_update_forward_and_parts():
    """The world-model mode runs in the same child script as the agent's, with its thread count and clock."""
    spec = {**SMALL, "mode": "update", "obs": "pixels", "warmup": 0, "repeats": 1}
    result = run_in_child(spec, ROOT)
    assert "error" not in result, result.get("error")
    assert result["clock"] == "process_cpu" and result["torch_threads"] == 1 and result["peak_rss_mb"] > 0
    assert {"encoder", "rssm_observe", "image_decoder"} == set(result["forward_parts"])
    assert result["update"]["n"] == 1 and result["frames_per_s_update"] > 0


def test_readme_speed_notes_give_the_phase_split_and_the_patch_to_cnn_ratio():
    from benchmarks import readme

    def result(obs, encoder, wm_s):
        return {"obs": obs, "encoder": encoder, "batch": 16, "length": 64, "speedup": 2.0, "same_losses": True,
                "agent_update": {"median_s": 1.0}, "baseline": {"agent_update": {"median_s": 2.0}},
                "rounds": [{"current": {"clock": "process_cpu"}}],
                "phases_s": {"world_model": wm_s, "imagine": 0.1, "total": 1.0, "other": 0.0}}

    data = {"results": [result("state", "patch", 0.3), result("pixels", "patch", 0.6), result("pixels", "cnn", 0.5)],
            "machine": {"cpu": {"processor": "x", "torch": "t"}}, "code": {"baseline": {"revision": "e8b2407"}}}
    text = readme.speed(data, "results/speed_cpu.json")
    assert "Where state's update goes now (median of the timed phases): world model 300 ms, imagination 100 ms." in text
    assert "the CNN encoder's" not in text  # no ratio measured in one run
    data["encoder_ratio"] = [{"preset": "cpu", "batch": 16, "length": 64, "decoder": "cnn", "device": "cpu",
                              "world_model_phase": 1.15, "world_model_phase_per_round": [1.1, 1.15, 1.2],
                              "agent_update": 1.1}]
    text = readme.speed(data, "results/speed_cpu.json")
    assert "world-model phase takes 1.15x the CNN encoder's" in text and "1.10, 1.15, 1.20" in text
