"""Methods that keep the networks trainable (agent.plasticity): shrink-and-perturb moves every weight by the
stated amounts; ReDo recycles exactly the units at or under tau, their incoming and outgoing entries and
their Adam moments, and nothing else; the loop applies them on schedule; config errors are clear."""

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from agent import plasticity
from agent.agent import Agent
from agent.config import PlasticityConfig, RunConfig, apply_overrides, config_to_dict, preset, validate_run
from benchmarks import continual
from benchmarks.continual_report import settings_key
from benchmarks.plasticity import measure

STATE = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)})
PIXELS_AND_STATE = gym.spaces.Dict({"state": STATE["state"], "image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})
ACT = gym.spaces.Box(-1, 1, (1,), np.float32)

RANGE = {"random_return": 0.0, "best_return": 1000.0}  # a DMC task's score range


def make_agent(obs=STATE, overrides=(), seed=0):
    cfg = dataclasses.replace(apply_overrides(preset("debug"), list(overrides)), seed=seed)
    return Agent(obs, ACT, cfg)


def make_batch(obs=STATE, B=3, T=6, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"action": rng.uniform(-1, 1, (B, T, 1)).astype(np.float32),
             "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
             "is_first": np.eye(T, dtype=bool)[[0] * B], "is_last": np.zeros((B, T), bool),
             "is_terminal": np.zeros((B, T), bool)}
    if "state" in obs.spaces:
        batch["state"] = rng.normal(size=(B, T, 5)).astype(np.float32)
    if "image" in obs.spaces:
        batch["image"] = rng.integers(0, 256, (B, T, *obs["image"].shape), dtype=np.uint8)
    return batch


def snapshot(agent):
    params = {k: v.detach().clone() for k, v in agent.named_parameters()}
    adam = {}
    for opt in (agent.wm.optimizer, agent.ac.actor_opt, agent.ac.critic_opt):
        for p, state in opt.state.items():
            adam[id(p)] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
    return params, adam


def adam_state(agent, param):
    for opt in (agent.wm.optimizer, agent.ac.actor_opt, agent.ac.critic_opt):
        if param in opt.state:
            return opt.state[param]
    raise AssertionError("parameter has no Adam state")


def trained_agent(obs=STATE, overrides=()):
    agent = make_agent(obs, overrides)
    agent.train_step(make_batch(obs, B=2, T=8, seed=1))  # Adam moments and step counts are non-zero now
    return agent


# --------------------------------------------------------------------------------------------- shrink-perturb


def test_shrink_perturb_moves_every_weight_to_shrink_theta_plus_perturb_fresh():
    agent = trained_agent()
    fresh = make_agent(seed=1234)  # a fresh initialisation from a known seed
    params, adam = snapshot(agent)
    cfg = PlasticityConfig(method="shrink_perturb", shrink=0.3, perturb=0.2, modules=("rssm", "critic"))
    metrics = plasticity.apply(agent, fresh, cfg, None)
    fresh_params = dict(fresh.named_parameters())
    for name, param in agent.named_parameters():
        if name.startswith(("wm.rssm.", "ac.critic.")):
            assert torch.equal(param, 0.3 * params[name] + 0.2 * fresh_params[name]), name
            state = adam_state(agent, param)
            assert not state["exp_avg"].any() and not state["exp_avg_sq"].any() and float(state["step"]) == 0, name
        elif name.startswith("ac.slow_critic."):  # tracks the critic: the same map, with the fresh critic
            twin = "ac.critic." + name[len("ac.slow_critic."):]
            assert torch.equal(param, 0.3 * params[name] + 0.2 * fresh_params[twin]), name
        else:
            assert torch.equal(param, params[name]), name  # encoder, decoders, heads, actor: untouched
            if id(param) in adam:
                assert torch.equal(adam_state(agent, param)["exp_avg"], adam[id(param)]["exp_avg"]), name
    assert metrics["plasticity/actor/weight_change"] == 0.0 and metrics["plasticity/rssm/weight_change"] > 0
    assert metrics["plasticity/critic/weight_norm_after"] < metrics["plasticity/critic/weight_norm_before"]


def test_defaults_and_the_fresh_initialisation_are_the_agents_own():
    cfg = PlasticityConfig()
    assert (cfg.method, cfg.every, cfg.shrink, cfg.perturb, cfg.tau) == ("none", 0, 0.4, 0.1, 0.025)
    assert cfg.modules == ("encoder", "rssm", "actor", "critic")
    agent = make_agent(seed=3)
    seed = plasticity.fresh_seed(3, 0)
    assert seed != plasticity.fresh_seed(3, 1) and seed != plasticity.fresh_seed(4, 0)
    rng = torch.get_rng_state()
    fresh = plasticity.fresh_agent(agent, STATE, seed)
    assert torch.equal(rng, torch.get_rng_state())  # building it draws nothing from the run's stream
    built = make_agent(seed=seed)  # the same config and spaces, that seed
    for (name, a), b in zip(fresh.named_parameters(), built.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(fresh.wm.rssm.post_embed.weight, agent.wm.rssm.post_embed.weight)
    assert not fresh.ac.critic.head.weight.any()  # the zero-initialised head stays zero-initialised


# --------------------------------------------------------------------------------------------- ReDo


def silu_outputs(agent, batch, modules):
    """Every SiLU output inside each named module on a batch, from the test's own forward hooks (independent
    of agent.plasticity's unit layers), the RSSM's F.silu of its GRU and posterior norms included:
    {module: {hooked layer: [(N, H) per call]}}, channels as units for conv maps and every block position of
    the block GRU as a unit."""
    records = {name: {} for name in modules}

    def hook(store, apply_silu):
        def fn(_module, _inputs, output):
            out = torch.nn.functional.silu(output) if apply_silu else output
            out = out.movedim(1, -1) if out.ndim == 4 else out.flatten(-2) if apply_silu and out.ndim == 3 else out
            store.append(out.reshape(-1, out.shape[-1]))
        return fn

    handles = []
    for name, module in modules.items():
        norms = [*module.gru_norms, module.post_norm] if name == "rssm" else []
        for layer in [m for m in module.modules() if isinstance(m, nn.SiLU)] + norms:
            records[name][layer] = []
            handles.append(layer.register_forward_hook(hook(records[name][layer], layer in norms)))
    try:
        with torch.no_grad(), plasticity.eager_cell(agent.wm.rssm):
            posterior, _, _ = agent.wm.observe(agent.to_torch(batch), None, sample=False)
            feat = agent.wm.rssm.features(posterior)
            agent.ac.actor(feat)
            agent.ac.critic(feat)
    finally:
        for handle in handles:
            handle.remove()
    return records


def actor_scores(agent, batch):
    """The actor's unit scores at its last SiLU, from the test's own hooks."""
    (calls,) = [list(silu_outputs(agent, batch, {"actor": agent.ac.actor})["actor"].values())[-1]]
    mean_abs = torch.cat(calls).abs().mean(0)
    return mean_abs / mean_abs.mean()


def test_redo_recycles_exactly_the_units_at_or_under_tau_and_nothing_else():
    agent = trained_agent()
    killed = [2, 9, 17]
    with torch.no_grad():  # silent units: scale and shift 0 make their SiLU output exactly 0
        agent.ac.actor.body.net[1].weight[killed] = 0.0
        agent.ac.actor.body.net[1].bias[killed] = 0.0
    batch = make_batch()
    scores = actor_scores(agent, batch)
    order = scores.argsort()
    assert set(order[:3].tolist()) == set(killed) and scores[order[3]] > 0
    tau = float(scores[order[3]] + scores[order[4]]) / 2  # the three silent units and the next quietest one
    expected = torch.zeros(32, dtype=torch.bool)
    expected[order[:4]] = True
    fresh = make_agent(seed=99)
    params, adam = snapshot(agent)
    metrics = plasticity.apply(agent, fresh, PlasticityConfig(method="redo", modules=("actor",), tau=tau), batch)
    assert metrics["plasticity/actor/units_reset"] == 4 and metrics["plasticity/actor/units"] == 32

    body, head = agent.ac.actor.body.net, agent.ac.actor.head
    fresh_body = fresh.ac.actor.body.net
    changed = {  # parameter: (entries that must change, the values they must take)
        "ac.actor.body.net.0.weight": (expected[:, None].expand(32, body[0].weight.shape[1]), fresh_body[0].weight),
        "ac.actor.body.net.1.weight": (expected, torch.ones(32)),  # a fresh norm: scale 1, shift 0
        "ac.actor.body.net.1.bias": (expected, torch.zeros(32)),
        "ac.actor.head.weight": (expected[None, :].expand_as(head.weight), torch.zeros_like(head.weight)),
    }
    for name, param in agent.named_parameters():
        old = params[name]
        if name not in changed:
            assert torch.equal(param, old), name  # the rest of the agent, bit for bit
            continue
        entries, values = changed[name]
        assert torch.equal(param[entries], values[entries]), name
        assert torch.equal(param[~entries], old[~entries]), name  # the other units, bit for bit
        state, before = adam_state(agent, param), adam[id(param)]
        for key in ("exp_avg", "exp_avg_sq"):
            assert not state[key][entries].any(), (name, key)
            assert torch.equal(state[key][~entries], before[key][~entries]), (name, key)
            assert before[key][entries].any(), (name, key)  # there was something to reset
        assert torch.equal(state["step"], before["step"]), name  # ReDo keeps the step count
    assert measure(agent, batch)["actor"]["dormant"] == 0.0  # all recycled units are live again


def test_redo_with_tau_zero_recycles_the_silent_units_only():
    agent = trained_agent()
    with torch.no_grad():
        agent.ac.critic.body.net[1].weight[[0, 5]] = 0.0
        agent.ac.critic.body.net[1].bias[[0, 5]] = 0.0
    metrics = plasticity.apply(agent, make_agent(seed=7), PlasticityConfig(method="redo", tau=0.0), make_batch())
    assert metrics["plasticity/critic/units_reset"] == 2 and metrics["plasticity/actor/units_reset"] == 0
    assert agent.ac.critic.body.net[1].weight[[0, 5]].eq(1.0).all()
    assert not agent.ac.critic.head.weight[:, [0, 5]].any() and not agent.ac.slow_critic.head.weight[:, [0, 5]].any()
    assert torch.equal(agent.ac.slow_critic.body.net[0].weight[[0, 5]], agent.ac.critic.body.net[0].weight[[0, 5]])


def test_unit_layers_are_every_silu_unit_and_the_benchmark_counts_them():
    """ReDo's unit layers are every SiLU of each module and nothing else, with the mean |h| of the test's own
    hooks (per call of a layer: the RSSM's once per step), and the benchmark's dormant fraction is over
    exactly those units."""
    agent = trained_agent(PIXELS_AND_STATE, ["world_model.encoder.kind=cnn", "world_model.encoder.cnn_min_res=4"])
    batch = make_batch(PIXELS_AND_STATE)
    layers = plasticity.unit_layers(agent)
    means = plasticity.mean_activations(agent, layers, batch)
    records = silu_outputs(agent, batch, plasticity.modules_of(agent))
    for module, found in records.items():
        ours = {layer.source: layer.name for layer in layers if layer.module == module}
        assert set(ours) == set(found) and found, module
        for source, calls in found.items():
            torch.testing.assert_close(means[ours[source]], torch.cat(calls).abs().mean(0))
    measured = measure(agent, batch, tau=0.3)
    for module in plasticity.modules_of(agent):
        masks = [plasticity.unit_scores(means[layer.name]) <= 0.3 for layer in layers if layer.module == module]
        units = sum(m.numel() for m in masks)
        assert sum(int(m.sum()) for m in masks) == pytest.approx(measured[module]["dormant"] * units), module


@pytest.mark.slow
def test_scores_see_inside_a_compiled_rssm_cell():
    """Forward hooks do not fire inside a torch.compile'd region: scoring runs the cell uncompiled."""
    batch = make_batch()
    plain, compiled = make_agent(), make_agent(overrides=["world_model.rssm.compile=true"])
    means = [plasticity.mean_activations(a, plasticity.unit_layers(a), batch) for a in (plain, compiled)]
    assert means[0].keys() == means[1].keys()
    for name in means[0]:
        assert torch.equal(means[0][name], means[1][name]), name
    assert measure(plain, batch, tau=0.3) == measure(compiled, batch, tau=0.3)  # the benchmark's measurement too
    assert compiled.wm.rssm._cell is not compiled.wm.rssm._observe_cell  # put back afterwards


ENCODERS = {"state": (STATE, []), "cnn": (PIXELS_AND_STATE, ["world_model.encoder.kind=cnn"]),
            "patch": (PIXELS_AND_STATE, ["world_model.encoder.kind=patch", "world_model.encoder.patch=4"])}
DEEP = ["world_model.rssm.dyn_layers=2", "world_model.rssm.posterior_layers=2", "world_model.rssm.prior_layers=2",
        "actor_critic.layers=2"]


def _unit(layer, agent):
    """A unit to probe: position 2 of block 1 in the block GRU, unit 1 elsewhere; and the layer's width."""
    if layer.blocks:
        J = agent.wm.rssm.D // agent.wm.rssm.G
        return J + 2, agent.wm.rssm.D
    return 1, dict(agent.named_parameters())[layer.incoming[0][0]].shape[0]


def _select(x, unit, blocks):
    if x.ndim == 4:  # (N, C, H, W): channel
        return x[:, unit]
    return x.flatten(-2)[..., unit] if blocks else x[..., unit]


def _outputs(agent, batch, state=None):
    posterior, prior, _ = agent.wm.observe(agent.to_torch(batch), state, sample=False)
    feat = agent.wm.rssm.features(posterior)
    return [posterior["logits"], prior["logits"], agent.ac.actor.head(agent.ac.actor.body(feat)), agent.ac.critic(feat)]


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_outgoing_entries_are_everything_that_reads_a_unit(encoder):
    obs, overrides = ENCODERS[encoder]
    agent = make_agent(obs, [*overrides, *DEEP])
    with torch.no_grad():
        nn.init.normal_(agent.ac.critic.head.weight)  # zero-initialised: it would hide a change otherwise
    batch = make_batch(obs, B=2, T=4)
    params = dict(agent.named_parameters())
    for layer in plasticity.unit_layers(agent):
        unit, width = _unit(layer, agent)
        mask = torch.zeros(width, dtype=torch.bool)
        mask[unit] = True

        def bump(_module, _inputs, output, unit=unit, blocks=layer.blocks):
            out = output.clone()
            if out.ndim == 4:
                out[:, unit] += 3.0
            elif blocks:
                out.view(*out.shape[:-2], -1)[..., unit] += 3.0
            else:
                out[..., unit] += 3.0
            return out

        with torch.no_grad():
            base = _outputs(agent, batch)
            handle = layer.source.register_forward_hook(bump)
            bumped = _outputs(agent, batch)  # the unit moved: something downstream must see it
            assert any(not torch.allclose(a, b) for a, b in zip(base, bumped)), layer.name
            saved = {name: params[name].clone() for name, _ in layer.outgoing}
            for name, mask_fn in layer.outgoing:
                params[name][mask_fn(mask, params[name].shape)] = 0.0
            silenced = _outputs(agent, batch)  # ... and nothing once its outgoing entries are zero
            zeroed = {name: params[name].clone() for name in saved}
            handle.remove()
            after = _outputs(agent, batch)
            for name, value in saved.items():
                params[name].copy_(value)
        for a, b in zip(after, silenced):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=layer.name)
        for name, mask_fn in layer.outgoing:  # and only the entries reading that one unit were zeroed
            entries = mask_fn(mask, params[name].shape)
            assert torch.equal(zeroed[name][~entries], params[name][~entries]), (layer.name, name)


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_incoming_weights_are_exactly_what_feeds_a_unit(encoder):
    """The gradient of a unit's pre-activation reaches its incoming entries of every listed weight and
    nothing else of them (the norm's scale and shift come after the pre-activation; the actor's test covers
    them). One step (T = 1) from a carried state with random deter and previous action, so every input is
    live and no gradient comes back through the recurrence."""
    obs, overrides = ENCODERS[encoder]
    agent = make_agent(obs, [*overrides, *DEEP])
    batch = {**make_batch(obs, B=3, T=1), "is_first": np.zeros((3, 1), bool)}
    state = {k: v.detach() for k, v in agent.wm.initial(3).items()}
    state.update(deter=torch.randn(3, agent.wm.rssm.D), action=torch.rand(3, 1) * 2 - 1)
    params = dict(agent.named_parameters())
    for layer in plasticity.unit_layers(agent):
        unit, width = _unit(layer, agent)
        mask = torch.zeros(width, dtype=torch.bool)
        mask[unit] = True
        if isinstance(layer.source, nn.SiLU) and not layer.name.endswith("mlp.0"):
            prefix, index = layer.name.rsplit(".", 1)
            pre = agent.get_submodule(f"{prefix}.{int(index) + 1}")  # the norm after the Linear/Conv
        else:
            pre = layer.source  # the RSSM's norms, or the Transformer MLP's SiLU (no norm)
        captured = []
        handle = pre.register_forward_hook(lambda _m, inputs, _o, store=captured: store.append(inputs[0]))
        _outputs(agent, batch, state)
        handle.remove()
        total = sum(_select(x, unit, layer.blocks).sum() for x in captured)
        weights = [(name, fn) for name, fn in layer.incoming if not name.startswith(_path(agent, pre) + ".")]
        grads = torch.autograd.grad(total, [params[name] for name, _ in weights])
        assert weights, layer.name
        for (name, mask_fn), grad in zip(weights, grads):
            entries = mask_fn(mask, params[name].shape)
            assert not grad[~entries].any(), (layer.name, name)  # nothing outside the unit's entries feeds it
            assert grad[entries].any(), (layer.name, name)  # and they do


def _path(agent, module):
    return next(name for name, m in agent.named_modules() if m is module)


# --------------------------------------------------------------------------------------------- the run


FAST = ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
        "train.log_every=100", "replay.chunk=64", "replay.capacity=5000", "agent.actor_critic.horizon=5",
        "train.threads=1", "train.eval_every=0", "train.eval_episodes=0", "train.video_every=0"]


def test_a_run_with_redo_every_k_updates_applies_it_on_schedule_and_trains(tmp_path):
    from agent.cli import main

    run = tmp_path / "run"
    assert main(["train", "--env", "gym:Pendulum-v1", "--preset", "debug", "--logdir", str(run), "--steps", "400",
                 "--no-progress", "--set", *FAST, "plasticity.method=redo", "plasticity.every=3",
                 "plasticity.tau=0.1", "plasticity.modules=actor,critic"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    updates = state["counters"]["updates"]
    assert updates >= 9 and state["counters"]["plasticity_applications"] == updates // 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    applied = [r for r in rows if "plasticity/applications" in r]
    assert [r["plasticity/applications"] for r in applied] == list(range(1, updates // 3 + 1))
    assert all("plasticity/actor/units_reset" in r and "plasticity/encoder/units_reset" not in r for r in applied)
    assert all(r["plasticity/encoder/weight_change"] == 0.0 for r in applied)  # not selected
    losses = [r["train/loss/actor"] for r in rows if "train/loss/actor" in r]
    assert losses and all(np.isfinite(losses))
    assert json.loads((run / "config.json").read_text())["plasticity"]["modules"] == ["actor", "critic"]


@pytest.mark.parametrize("override,words", [
    ("plasticity.method=redoo", ["plasticity.method", "'redoo'", "redo"]),
    ("plasticity.every=-1", ["plasticity.every", ">= 0"]),
    ("plasticity.modules=actor,decoder", ["plasticity.modules", "'decoder'", "encoder"]),
    ("plasticity.modules=", ["plasticity.modules", "at least one"]),
    ("plasticity.modules=actor,actor", ["plasticity.modules", "twice"]),
    ("plasticity.shrink=1.5", ["plasticity.shrink", "[0, 1]"]),
    ("plasticity.perturb=-0.1", ["plasticity.perturb", ">= 0"]),
    ("plasticity.tau=1", ["plasticity.tau", "[0, 1)"]),
])
def test_bad_plasticity_settings_are_clear_errors(override, words):
    with pytest.raises(ValueError) as error:
        validate_run(apply_overrides(RunConfig(agent=preset("debug")), [override]))
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_plasticity_is_part_of_the_strategy_and_leaves_old_runs_comparable(tmp_path):
    assert continual.parse_strategy("reservoir+taskid+redo") == continual.Strategy(
        "reservoir+redo+taskid", "reservoir", True, "redo")
    assert continual.parse_strategy("fifo").plasticity == "none"
    for bad in ("fifo+redo+shrink_perturb", "fifo+redo+redo", "fifo+dropout"):
        with pytest.raises(ValueError, match="fifo\\+redo"):
            continual.parse_strategy(bad)
    seq = continual.sequence_from_dict({"tasks": [{"name": "a", "spec": "dmc:cartpole-balance", **RANGE}]})
    cfg = continual.run_config(seq, continual.parse_strategy("mix+shrink_perturb"), 0, ("plasticity.every=50",))
    assert cfg.plasticity.method == "shrink_perturb" and cfg.plasticity.every == 50
    with pytest.raises(ValueError, match="plasticity.method"):
        continual.run_config(seq, continual.parse_strategy("fifo"), 0, ("plasticity.method=redo",))
    # The method is the strategy's: runs with and without it are compared; the reference cache still knows
    # configs written before the plasticity section existed.
    plain = config_to_dict(continual.run_config(seq, continual.parse_strategy("fifo"), 0))
    redo = config_to_dict(continual.run_config(seq, continual.parse_strategy("fifo+redo"), 0))
    assert settings_key(seq.to_dict(), plain) == settings_key(seq.to_dict(), redo)
    tuned = config_to_dict(continual.run_config(seq, continual.parse_strategy("fifo+redo"), 0, ("plasticity.tau=0.1",)))
    assert settings_key(seq.to_dict(), tuned) != settings_key(seq.to_dict(), redo)
    job = continual.reference_job(seq, 0, 0, ())
    old_job = dataclasses.replace(job, config={k: v for k, v in job.config.items() if k != "plasticity"})
    assert continual.reference_key(job) == continual.reference_key(old_job)
    rundir = tmp_path / "run"
    rundir.mkdir()
    (rundir / "job.json").write_text(json.dumps(old_job.to_dict()))  # an in-flight run from before
    assert continual.prepare(job, rundir, fresh=False)
    with pytest.raises(ValueError, match="other settings"):
        continual.prepare(continual.continual_job(seq, "fifo+redo", 0, ()), rundir, fresh=False)


@pytest.mark.slow
def test_a_continual_run_applies_its_method_at_each_task_boundary(tmp_path):
    from agent.logger import read_scalars
    from benchmarks.continual_report import finalise_run

    tiny = {"obs": "state", "action_repeat": 8, "steps_per_task": 400, "preset": "debug", "cycles": 1,
            "overrides": ["train.prefill=100", "train.batch_size=4", "train.batch_length=16", "train.train_ratio=16",
                          "train.log_every=100", "replay.chunk=32", "agent.actor_critic.horizon=5",
                          "train.threads=1", "train.checkpoint_every=200", "train.video_every=0"],
            "replay_capacity": 128, "eval_every": 200, "eval_episodes": 1, "end_evaluations": 2,
            "heldout_episodes": 1,
            "tasks": [{"name": "default", "spec": "dmc:cartpole-swingup", **RANGE},
                      {"name": "inverted", "spec": "dmc:cartpole-swingup", "variant": {"gear": -1}, **RANGE}]}
    seq = continual.sequence_from_dict(tiny, default_name="tiny")
    job = continual.continual_job(seq, "fifo+redo", 0, ("plasticity.tau=0.5",))
    rundir = tmp_path / "tiny" / "fifo+redo" / "seed_0"
    assert continual.prepare(job, rundir, fresh=False)
    record = continual.run_job(job, rundir)
    assert record["strategy"]["plasticity"] == "redo" and record["config"]["plasticity"]["tau"] == 0.5
    (reset,) = record["plasticity_resets"]  # one boundary in a two-task run: after stage 0, not after the last
    assert reset["stage"] == 0 and reset["env_steps"] == 400 and reset["plasticity/actor/units_reset"] > 0
    assert record["counters"]["plasticity_applications"] == 1
    tags = read_scalars(rundir)
    assert [step for step, _ in tags["plasticity/applications"]] == [400]
    results = finalise_run(rundir, {})
    assert results["strategy"] == "fifo+redo" and results["plasticity_method"] == "redo"
    # Measured again right after the method on the boundary evaluation's probe batch: only the method differs.
    before = next(p for p in record["plasticity"] if p["env_steps"] == 400)
    assert set(reset["after"]) == {"encoder", "rssm", "actor", "critic"}
    assert reset["after"]["actor"] != before["actor"]  # recycled actor units answer differently
    assert [step for step, _ in tags["continual/dormant_after_reset/actor"]] == [400]
    (boundary,) = results["metrics"]["plasticity_boundaries"]
    assert boundary["before"]["actor"] == before["actor"] and boundary["after_reset"] == reset["after"]
