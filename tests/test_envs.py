"""The environment layer: the Gymnasium contract, determinism, time limits, variants and errors."""

import os
import subprocess
import sys
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs


def rollout(env, actions, seed):
    """Observations and rewards of a fixed action sequence from reset(seed)."""
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for act in actions:
        obs, reward, terminated, truncated, _ = env.step(act)
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return frames, rewards


@pytest.mark.parametrize("spec,obs", [
    ("dmc:cartpole-swingup", "pixels"),
    ("dmc:cartpole-swingup", "state"),
    ("dmc:walker-walk", "both"),
    ("dmc:ball_in_cup-catch", "pixels"),
    ("dmc:cheetah-run_backwards", "state"),
    ("gym:Pendulum-v1", "both"),
    ("gym:HalfCheetah-v5", "both"),
    ("gym:CartPole-v1", "state"),
])
def test_check_env_and_spaces(spec, obs):
    env = envs.make(spec, obs=obs, seed=0, action_repeat=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # check_env warns about unbounded state Boxes and wrappers
        check_env(env)
    spaces = env.observation_space.spaces
    assert set(spaces) == {"pixels": {"image"}, "state": {"state"}, "both": {"image", "state"}}[obs]
    first, _ = env.reset(seed=1)
    if "image" in spaces:
        assert spaces["image"].shape == (64, 64, 3) and spaces["image"].dtype == np.uint8
        assert first["image"].dtype == np.uint8 and first["image"].std() > 0  # a real picture, not blank
    if "state" in spaces:
        assert first["state"].dtype == np.float32 and first["state"].ndim == 1
    if isinstance(env.action_space, gym.spaces.Box):
        assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    else:
        assert isinstance(env.action_space, gym.spaces.Discrete)
    env.close()


def test_image_size_and_camera():
    env = envs.make("dmc:walker-walk", obs="pixels", size=32, camera=1)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3)
    other = envs.make("dmc:walker-walk", obs="pixels", size=32, camera=0)
    assert not np.array_equal(other.reset(seed=0)[0]["image"], obs["image"])


def test_state_follows_suite_key_order():
    env = envs.make("dmc:walker-walk", obs="state")
    obs, _ = env.reset(seed=0)
    keys = env.unwrapped.state_keys
    assert list(keys) == ["orientations", "height", "velocity"]
    height = obs["state"][keys["height"]]
    np.testing.assert_allclose(height, env.unwrapped.physics.torso_height(), rtol=1e-6)


@pytest.mark.parametrize("spec,obs", [("dmc:cartpole-swingup", "both"), ("gym:HalfCheetah-v5", "both"),
                                      ("gym:Pendulum-v1", "state")])
def test_same_seed_same_actions_same_episode(spec, obs):
    actions = np.random.default_rng(0).uniform(-1, 1, (30, *envs.make(spec, obs="state").action_space.shape))
    runs = [rollout(envs.make(spec, obs=obs), actions.astype(np.float32), seed=7) for _ in range(2)]
    for a, b in zip(runs[0][0], runs[1][0]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert runs[0][1] == runs[1][1]
    other = rollout(envs.make(spec, obs=obs), actions.astype(np.float32), seed=8)
    assert not np.array_equal(other[0][0]["state" if "state" in other[0][0] else "image"],
                              runs[0][0][0]["state" if "state" in other[0][0] else "image"])


def test_make_seed_fixes_the_first_reset():
    a = envs.make("dmc:cartpole-swingup", obs="state", seed=3).reset()[0]["state"]
    b = envs.make("dmc:cartpole-swingup", obs="state", seed=3).reset()[0]["state"]
    c = envs.make("dmc:cartpole-swingup", obs="state", seed=4).reset()[0]["state"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_action_repeat_sums_rewards():
    actions = np.random.default_rng(1).uniform(-1, 1, (12, 1)).astype(np.float32)
    single = envs.make("dmc:cartpole-swingup", obs="state")
    frames, rewards = rollout(single, actions, seed=0)
    repeated = envs.make("dmc:cartpole-swingup", obs="state", action_repeat=3)
    # The same action three times in the single env equals one step of the repeated env.
    frames3, rewards3 = rollout(repeated, actions[::3], seed=0)
    frames1, rewards1 = rollout(single, np.repeat(actions[::3], 3, axis=0), seed=0)
    np.testing.assert_allclose(rewards3, np.add.reduceat(rewards1, np.arange(0, 12, 3)), rtol=1e-6)
    np.testing.assert_array_equal(frames3[-1]["state"], frames1[-1]["state"])
    assert len(frames) == 13


def test_time_limit_is_truncation_in_env_steps_and_repeat_stops_at_the_end():
    env = envs.make("dmc:cartpole-balance", obs="state", action_repeat=3)
    assert env.get_wrapper_attr("max_episode_steps") == 334  # ceil(1000 suite steps / 3)
    env.reset(seed=0)
    steps, total = 0, 0.0
    while True:
        _, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
        steps, total = steps + 1, total + reward
        if terminated or truncated:
            break
    assert (steps, terminated, truncated) == (334, False, True)
    # The last env step held one simulator step, not three: the repeat stopped at the limit.
    assert env.unwrapped.physics.data.time == pytest.approx(1000 * env.unwrapped._env.control_timestep())
    assert info["episode"]["l"] == 334 and info["episode"]["r"] == pytest.approx(total)
    assert info["task"] == "dmc:cartpole-balance"


def test_termination_is_not_truncation():
    env = envs.make("gym:CartPole-v1", obs="state")
    env.reset(seed=0)
    for _ in range(500):
        _, _, terminated, truncated, info = env.step(1)  # always push right: the pole falls
        if terminated or truncated:
            break
    assert terminated and not truncated and info["episode"]["l"] < 100


def test_simulator_failure_ends_the_episode_instead_of_crashing():
    for spec, n in [("dmc:walker-walk", 6), ("gym:Hopper-v5", 3)]:
        env = envs.make(spec, obs="state")
        env.reset(seed=0)
        env.unwrapped.data.qvel[:] = 1e30 if spec.startswith("dmc") else np.nan
        _, reward, terminated, truncated, info = env.step(np.zeros(n, np.float32))
        assert info["simulator_failure"] and truncated and not terminated and reward == 0.0
        obs, _ = env.reset()
        assert np.all(np.isfinite(obs["state"]))


# ----- variants


def pole_angle_after(variant, steps=60):
    env = envs.make("dmc:cartpole-balance", obs="state", variant=variant)
    env.reset(seed=0)
    for _ in range(steps):
        env.step(np.zeros(1, np.float32))
    return abs(env.unwrapped.physics.named.data.qpos["hinge_1"][0])


def test_lower_gravity_slows_the_fall():
    assert pole_angle_after({"gravity": 0.3}) < 0.5 * pole_angle_after({})


def cart_after_pushes(variant, action=1.0, steps=30):
    env = envs.make("dmc:cartpole-balance", obs="state", variant=variant)
    obs, _ = env.reset(seed=0)
    for _ in range(steps):
        obs, *_ = env.step(np.full(1, action, np.float32))
    return obs["state"]


def test_negative_gear_inverts_the_action():
    np.testing.assert_allclose(cart_after_pushes({"gear": -1}, action=1.0), cart_after_pushes({}, action=-1.0),
                               atol=1e-6)
    assert cart_after_pushes({}, 1.0)[0] > 0.05  # pushing right moves the cart right


def test_heavier_pole_slows_the_cart():
    assert cart_after_pushes({"mass": {"pole_1": 10.0}})[0] < 0.9 * cart_after_pushes({})[0]


def test_damping_and_friction_change_the_dynamics():
    base = cart_after_pushes({})
    assert cart_after_pushes({"damping": {"slider": 1e5}})[0] < 0.5 * base[0]
    heavy_friction = envs.make("dmc:cheetah-run", obs="state", variant={"friction": 0.05})
    normal = envs.make("dmc:cheetah-run", obs="state")
    actions = np.random.default_rng(0).uniform(-1, 1, (100, 6)).astype(np.float32)
    a, _ = rollout(heavy_friction, actions, seed=0)
    b, _ = rollout(normal, actions, seed=0)
    assert np.abs(a[-1]["state"] - b[-1]["state"]).max() > 0.1


def test_backwards_reward_variants():
    for spec, set_speed in [("dmc:cheetah-run", "rootx"), ("dmc:walker-walk", "rootx")]:
        forward = envs.make(spec, obs="state")
        backward = envs.make(spec, obs="state", variant={"direction": -1})
        rewards = []
        for env in (forward, backward):
            env.reset(seed=0)
            physics = env.unwrapped.physics
            physics.named.data.qvel[set_speed] = -12.0  # moving fast to the left (backwards)
            physics.forward()
            rewards.append(env.unwrapped._env.task.get_reward(physics))
        assert rewards[1] > rewards[0] + 0.1, (spec, rewards)


def test_variant_is_applied_at_every_reset_and_named():
    env = envs.make("dmc:cartpole-swingup", obs="state", variant={"mass": {"pole_1": 3}, "gravity": 0.5})
    model = env.unwrapped.model
    default_mass = envs.make("dmc:cartpole-swingup", obs="state").unwrapped.model.body_mass[2]
    for _ in range(3):  # idempotent: multiplies the loaded values, not the last ones
        _, info = env.reset()
        assert model.body_mass[2] == pytest.approx(3 * default_mass)
        assert model.opt.gravity[2] == pytest.approx(-9.81 * 0.5)
    assert info["task"] == "dmc:cartpole-swingup[gravity=0.5,mass[pole_1]=3]"
    assert env.get_wrapper_attr("variant") == {"mass": {"pole_1": 3.0}, "gravity": 0.5}


def test_variants_on_gymnasium_mujoco():
    env = envs.make("gym:HalfCheetah-v5", obs="state", variant={"gravity": 0.15})
    env.reset(seed=0)
    assert env.unwrapped.model.opt.gravity[2] == pytest.approx(-9.81 * 0.15)


@pytest.mark.parametrize("variant,words", [
    ({"gravty": 0.5}, ["gravty", "gravity"]),
    ({"mass": {"pol": 2.0}}, ["pol", "pole_1"]),
    ({"mass": 0.0}, ["mass", "> 0"]),
    ({"gravity": -1.0}, ["gravity", ">= 0"]),
    ({"gear": 0}, ["gear", "!= 0"]),
    ({"friction": float("nan")}, ["friction"]),
    ({"gear": {"slide": "fast"}}, ["gear[slide]", "number"]),
    ({"direction": 2}, ["direction"]),
    ({"direction": -1}, ["direction", "walker"]),
    ("gravity", ["dict"]),
])
def test_bad_variants_are_clear_value_errors(variant, words):
    with pytest.raises(ValueError) as error:
        envs.make("dmc:cartpole-swingup", obs="state", variant=variant)
    for word in words:
        assert word in str(error.value)


# ----- classic-control variants


def pendulum_velocity_after(variant, theta, theta_dot, action, steps=1):
    """Pendulum's angular velocity after ``steps`` steps of ``action`` (in [-1, 1]) from a set state."""
    env = envs.make("gym:Pendulum-v1", obs="state", variant=variant)
    env.reset(seed=0)
    env.unwrapped.state = np.array([theta, theta_dot])
    for _ in range(steps):
        obs, *_ = env.step(np.full(1, action, np.float32))
    return float(obs["state"][2])


def test_pendulum_inverted_torque_gives_the_opposite_angular_acceleration():
    # Upright (theta 0) gravity exerts no torque, so the change of velocity is the action's alone:
    # 3 / (m l^2) * 2 (full torque) * 0.05 s = 0.3 rad/s for action 1 on the default pendulum.
    assert pendulum_velocity_after({}, 0.0, 0.0, 1.0) == pytest.approx(0.3, abs=1e-6)
    assert pendulum_velocity_after({"gear": -1}, 0.0, 0.0, 1.0) == pytest.approx(-0.3, abs=1e-6)
    # Away from upright too: the same action from the same state, inverted, equals the opposite action.
    assert pendulum_velocity_after({"gear": -1}, 1.0, 0.5, 0.7, steps=5) == \
        pytest.approx(pendulum_velocity_after({}, 1.0, 0.5, -0.7, steps=5), abs=1e-6)
    assert pendulum_velocity_after({"gear": 0.5}, 0.0, 0.0, 1.0) == pytest.approx(0.15, abs=1e-6)
    assert pendulum_velocity_after({"gear": 2}, 0.0, 0.0, 1.0) == pytest.approx(0.6, abs=1e-6)  # not clipped


def test_pendulum_gravity_mass_and_length():
    # Without gravity a resting pendulum stays at rest, wherever it points; with it, it falls.
    assert pendulum_velocity_after({"gravity": 0}, 1.0, 0.0, 0.0, steps=10) == 0.0
    assert pendulum_velocity_after({}, 1.0, 0.0, 0.0) == pytest.approx(1.5 * 10 * np.sin(1.0) * 0.05, abs=1e-6)
    assert pendulum_velocity_after({"gravity": 0.5}, 1.0, 0.0, 0.0) == \
        pytest.approx(0.5 * pendulum_velocity_after({}, 1.0, 0.0, 0.0), abs=1e-6)
    # The torque's effect is 3 / (m l^2); gravity's, 3 g / (2 l).
    assert pendulum_velocity_after({"mass": 2}, 0.0, 0.0, 1.0) == pytest.approx(0.15, abs=1e-6)
    assert pendulum_velocity_after({"length": 2}, 0.0, 0.0, 1.0) == pytest.approx(0.075, abs=1e-6)
    assert pendulum_velocity_after({"length": 2}, 1.0, 0.0, 0.0) == \
        pytest.approx(0.5 * pendulum_velocity_after({}, 1.0, 0.0, 0.0), abs=1e-6)


def test_classic_variants_are_applied_at_every_reset_and_named():
    env = envs.make("gym:Pendulum-v1", obs="state", variant={"mass": {"pole": 3}, "gear": -1})
    for _ in range(3):  # idempotent: multiplies the values the env was built with
        _, info = env.reset()
        assert env.unwrapped.m == 3.0 and env.unwrapped.max_torque == 2.0 and env.unwrapped.g == 10.0
    assert info["task"] == "gym:Pendulum-v1[gear=-1,mass[pole]=3]"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # check_env warns about unbounded state Boxes and wrappers
        check_env(env)


def test_cartpole_variants():
    actions = [1] * 8
    inverted, _ = rollout(envs.make("gym:CartPole-v1", obs="state", variant={"gear": -1}), actions, seed=0)
    flipped, _ = rollout(envs.make("gym:CartPole-v1", obs="state"), [0] * 8, seed=0)
    np.testing.assert_allclose(inverted[-1]["state"], flipped[-1]["state"])
    env = envs.make("gym:CartPole-v1", obs="state", variant={"mass": {"pole": 2}, "length": 3})
    env.reset(seed=0)
    base = env.unwrapped
    assert base.total_mass == pytest.approx(1.2) and base.polemass_length == pytest.approx(0.2 * 1.5)


@pytest.mark.parametrize("spec,variant,words", [
    ("gym:Pendulum-v1", {"gravty": 0.5}, ["'gravty'", "Did you mean: gravity", "gravity, mass, length, gear"]),
    ("gym:Pendulum-v1", {"lenght": 2}, ["'lenght'", "Did you mean: length"]),
    ("gym:Pendulum-v1", {"friction": 2}, ["'friction'", "does not apply", "gym:Pendulum-v1"]),
    ("gym:Pendulum-v1", {"direction": -1}, ["'direction'", "does not apply"]),
    ("gym:Pendulum-v1", {"mass": {"pol": 2}}, ["'pol'", "Did you mean: pole"]),
    ("gym:Pendulum-v1", {"mass": 0}, ["mass", "> 0"]),
    ("gym:Pendulum-v1", {"gravity": -1}, ["gravity", ">= 0"]),
    ("gym:Pendulum-v1", {"gear": 0}, ["gear", "!= 0"]),
    ("gym:Pendulum-v1", {"length": float("inf")}, ["length", "finite"]),
    ("gym:Pendulum-v1", {"gear": "-1"}, ["gear", "number"]),
    ("gym:CartPole-v1", {"mass": {"carriage": 2}}, ["'carriage'", "cart, pole"]),
    ("gym:Acrobot-v1", {"gravity": 0.5}, ["gym:Acrobot-v1", "gym:Pendulum-v1"]),
    ("dmc:cartpole-swingup", {"length": 2}, ["'length'", "classic-control", "gravity, mass"]),
])
def test_bad_classic_variants_are_clear_value_errors(spec, variant, words):
    with pytest.raises(ValueError) as error:
        envs.make(spec, obs="state", variant=variant)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


# ----- bad input


@pytest.mark.parametrize("spec,words", [
    ("walker-walk", ["dmc:<domain>-<task>"]),
    ("dcm:walker-walk", ["dcm", "dmc"]),
    ("dmc:walkr-walk", ["walkr", "walker"]),
    ("dmc:walker-wlk", ["wlk", "walk"]),
    ("dmc:walker", ["dmc:<domain>-<task>"]),
    ("gym:Pendulm-v1", ["Pendulm-v1", "Pendulum-v1"]),
])
def test_unknown_specs_name_the_problem_and_suggest(spec, words):
    with pytest.raises(ValueError) as error:
        envs.make(spec)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("options,word", [
    ({"obs": "rgb"}, "obs"), ({"render_quality": "best"}, "render_quality"), ({"action_repeat": 0}, "action_repeat"),
    ({"size": 4}, "size"),
])
def test_bad_options(options, word):
    with pytest.raises(ValueError, match=word):
        envs.make("dmc:cartpole-swingup", **options)


def run_python(code, **env_vars):
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    environ.update(env_vars)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def test_missing_rendering_backend_is_a_readable_error():
    code = ("import envs\n"
            "try:\n    envs.make('dmc:cartpole-swingup', obs='pixels').reset(seed=0)\n"
            "except envs.RenderingUnavailableError as e:\n    print('CAUGHT', e)\n")
    result = run_python(code, MUJOCO_GL="glfw")  # a window backend with no display
    assert "CAUGHT" in result.stdout, result.stderr[-2000:]
    for word in ("MUJOCO_GL=glfw", "MUJOCO_GL=egl", "MUJOCO_GL=osmesa", "apt install", "obs='state'"):
        assert word in result.stdout


def test_headless_default_and_no_torch_in_envs():
    code = ("import sys, envs\n"
            "env = envs.make('dmc:cartpole-swingup', obs='pixels'); env.reset(seed=0)\n"
            "import os; print(os.environ['MUJOCO_GL'], 'torch' in sys.modules, 'agent' in sys.modules)\n")
    result = run_python(code)  # no MUJOCO_GL, no DISPLAY: envs picks EGL by itself
    assert result.stdout.split() == ["egl", "False", "False"], result.stderr[-2000:]


# ----- vector envs


def test_make_vec_shapes_and_next_step_autoreset():
    vec = envs.make_vec("gym:CartPole-v1", 2, seed=0, obs="both", size=32)
    assert isinstance(vec, gym.vector.AsyncVectorEnv)
    obs, _ = vec.reset(seed=0)
    assert obs["image"].shape == (2, 32, 32, 3) and obs["state"].shape == (2, 4)
    ended_at = None
    for t in range(200):
        obs, reward, terminated, truncated, info = vec.step(np.ones(2, dtype=np.int64))
        if ended_at is not None:
            # NEXT_STEP: the step after the end is the new episode's first step.
            assert reward[0] == 0.0 and not terminated[0] and not truncated[0]
            assert np.abs(obs["state"][0]).max() <= 0.05  # CartPole starts near upright and centred
            break
        if terminated[0] or truncated[0]:
            ended_at = t
            assert info["_episode"][0] and info["episode"]["l"][0] == t + 1
    assert ended_at is not None
    vec.close()


def test_make_vec_single_env_is_synchronous_with_dict_obs():
    vec = envs.make_vec("dmc:cartpole-swingup", 1, seed=0, obs="pixels")
    assert isinstance(vec, gym.vector.SyncVectorEnv)
    obs, _ = vec.reset(seed=0)
    assert obs["image"].shape == (1, 64, 64, 3) and obs["image"].dtype == np.uint8
    obs, *_ = vec.step(np.zeros((1, 1), np.float32))
    assert vec.get_attr("task_label") == ("dmc:cartpole-swingup",)
    vec.close()


def test_make_vec_rejects_bad_input_in_the_caller():
    with pytest.raises(ValueError, match="num_envs"):
        envs.make_vec("dmc:cartpole-swingup", 0)
    with pytest.raises(ValueError, match="walkr"):
        envs.make_vec("dmc:walkr-walk", 2)


def test_sim_state_is_the_simulators_own():
    env = envs.make("dmc:cartpole-swingup", obs="state", seed=0)
    env.reset()
    env.step(np.ones(1, np.float32))
    own, ours = env.unwrapped.sim_state(), envs.sim_state(env)
    assert envs.has_sim_state(env) and np.abs(ours["qvel"]).max() > 0
    np.testing.assert_array_equal(ours["qpos"], own["qpos"])
    np.testing.assert_array_equal(ours["qvel"], own["qvel"])
    ours["qpos"][:] = 123.0  # a copy, not a view of the simulator
    assert env.unwrapped.sim_state()["qpos"][0] != 123.0
    assert envs.sim_state_names(env) == {"qpos": ["qpos[slider]", "qpos[hinge_1]"],
                                         "qvel": ["qvel[slider]", "qvel[hinge_1]"]}
    assert envs.unlimited_hinges(env) == ["qpos[hinge_1]"]  # the pole can swing round; the cart is limited
    env.close()


class _FakeMujocoEnv:
    def __init__(self, xml):
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.unwrapped = self


def test_names_of_free_ball_and_unnamed_joints():
    env = _FakeMujocoEnv("""<mujoco><worldbody><body><freejoint name="root"/><geom size="0.1"/>
        <body pos="0 0 1"><joint type="ball" name="shoulder"/><geom size="0.1"/>
        <body pos="0 0 1"><joint type="hinge" axis="0 1 0"/><geom size="0.1"/></body></body></body>
        </worldbody></mujoco>""")
    names = envs.sim_state_names(env)
    assert names["qpos"] == ["qpos[root:x]", "qpos[root:y]", "qpos[root:z]", "qpos[root:qw]", "qpos[root:qx]",
                             "qpos[root:qy]", "qpos[root:qz]", "qpos[shoulder:qw]", "qpos[shoulder:qx]",
                             "qpos[shoulder:qy]", "qpos[shoulder:qz]", "qpos[joint2]"]
    assert names["qvel"] == ["qvel[root:vx]", "qvel[root:vy]", "qvel[root:vz]", "qvel[root:wx]", "qvel[root:wy]",
                             "qvel[root:wz]", "qvel[shoulder:wx]", "qvel[shoulder:wy]", "qvel[shoulder:wz]",
                             "qvel[joint2]"]
    assert envs.unlimited_hinges(env) == ["qpos[joint2]"]
    assert envs.sim_state(env)["qpos"].shape == (12,)


def test_envs_without_a_simulator_say_so():
    env = envs.make("gym:Pendulum-v1", obs="state")
    assert not envs.has_sim_state(env)
    with pytest.raises(ValueError, match="no MuJoCo simulator state"):
        envs.sim_state(env)
