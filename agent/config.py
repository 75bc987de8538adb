"""Configuration: one frozen dataclass per component, nested in `AgentConfig`, plus presets and helpers.

Every field carries a one-line help string in `metadata["help"]`. Nothing mutates a config after
parsing: `apply_overrides` and `config_from_dict` build new instances with `dataclasses.replace`.
Facts from the environment (observation and action spaces) are not config; they are passed to
constructors, and `validate(cfg, image_shape=...)` checks what depends on them.

Size presets follow DreamerV3's model-size table (Hafner et al. 2023, "Mastering Diverse Domains
through World Models", Table of model sizes; values also in its public configs.yaml): deter size,
hidden size, classes per latent group, CNN depth and MLP units. The patch-encoder width per size is
our own choice (8 x CNN depth), so that the CNN/patch ablation stays on a comparable budget.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help string (a dict or list default: a fresh copy each)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _sub(cls: type, help: str) -> Any:
    """A nested-config field whose default is `cls()`."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class EncoderConfig:
    """Observation encoders: images via the causal patch encoder or a per-frame CNN; states via an MLP."""

    kind: Literal["patch", "cnn"] = _f("patch", "image encoder: causal tubelet Transformer or per-frame CNN")
    tubelet_frames: int = _f(2, "k_t: frames per causal tubelet (t-k_t+1..t)")
    patch: int = _f(8, "p: spatial patch size in pixels (64x64 images -> 64 tokens)")
    width: int = _f(128, "D: token width of the patch encoder (divisible by 4 and by heads)")
    depth: int = _f(2, "pre-norm Transformer blocks in the patch encoder")
    heads: int = _f(4, "attention heads in the patch encoder and its pooling")
    mlp_ratio: int = _f(4, "Transformer MLP hidden size = mlp_ratio * width")
    pool_queries: int = _f(4, "learned queries of the attention pooling; embed = pool_queries * width")
    cnn_depth: int = _f(32, "d: channels of the first CNN layer; layers use d, 2d, 4d, 8d")
    cnn_min_res: int = _f(4, "the CNN halves the resolution until it reaches this size")
    mlp_units: int = _f(256, "units of the state MLP encoder")
    mlp_layers: int = _f(3, "layers of the state MLP encoder")
    symlog_state: bool = _f(True, "apply symlog to state inputs (DreamerV3)")


@dataclass(frozen=True)
class DecoderConfig:
    """Reconstruction decoders for images and states."""

    kind: Literal["cnn", "patch"] = _f(
        "cnn", "image decoder: transposed CNN (DreamerV3) or token-wise patch decoder"
    )
    cnn_depth: int = _f(32, "d: the transposed CNN uses 8d, 4d, 2d, d channels from 4x4 up")
    cnn_min_res: int = _f(4, "resolution the transposed CNN starts from")
    patch_width: int = _f(64, "token width of the patch decoder")
    patch_depth: int = _f(1, "Transformer blocks of the patch decoder (0: token-wise linear only)")
    patch_heads: int = _f(2, "attention heads of the patch decoder")
    mlp_units: int = _f(256, "units of the state decoder MLP")
    mlp_layers: int = _f(3, "layers of the state decoder MLP")


@dataclass(frozen=True)
class RSSMConfig:
    """Recurrent state-space model: block-diagonal normalised GRU + S categoricals of K classes."""

    deter: int = _f(4096, "size of the deterministic recurrent state")
    hidden: int = _f(512, "hidden units of the RSSM's input, prior and posterior layers")
    stoch: int = _f(32, "S: number of categorical latent groups")
    classes: int = _f(32, "K: classes per categorical group")
    blocks: int = _f(8, "G: blocks of the block-diagonal GRU (deter must divide by it)")
    dyn_layers: int = _f(1, "block-linear hidden layers before the GRU gates (>= 1)")
    prior_layers: int = _f(2, "hidden layers of the prior (transition) MLP")
    posterior_layers: int = _f(1, "hidden layers of the posterior (representation) MLP")
    unimix: float = _f(0.01, "uniform mixture in every categorical (DreamerV3: 1%)")
    initial: Literal["learned", "zero"] = _f(
        "learned", "initial state: tanh of a learned vector (+ its prior mode) or all zeros"
    )
    compile: bool = _f(False, "torch.compile the observe step cell (the hot loop); no faster on the 2-core "
                              "AVX2 CPU measured so far (README, speed)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = _f(
        "default", "torch.compile mode of that cell; reduce-overhead replays it as CUDA graphs on a GPU")


@dataclass(frozen=True)
class HeadsConfig:
    """Reward and continue predictors on the model features."""

    bins: int = _f(255, "two-hot bins of the reward head, uniform in symlog space")
    bin_range: float = _f(20.0, "bins span [-bin_range, bin_range] in symlog space")
    units: int = _f(256, "units of the reward and continue MLPs")
    layers: int = _f(1, "hidden layers of the reward and continue MLPs")


@dataclass(frozen=True)
class LossConfig:
    """Loss scales (one table for the weighted sum of the (B, T) terms) and free bits."""

    image: float = _f(1.0, "scale of the image reconstruction loss (MSE summed over pixels)")
    state: float = _f(1.0, "scale of the state reconstruction loss (symlog MSE)")
    reward: float = _f(1.0, "scale of the reward loss (symlog two-hot cross-entropy)")
    continue_: float = _f(1.0, "scale of the continue loss (Bernoulli log-likelihood)")
    dyn: float = _f(1.0, "scale of the dynamics KL (prior towards stopped-gradient posterior)")
    rep: float = _f(0.1, "scale of the representation KL (posterior towards stopped-gradient prior)")
    free_nats: float = _f(1.0, "free bits: each KL term is clipped below at this many nats")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for the whole world model, with global grad-norm clipping."""

    lr: float = _f(1e-4, "learning rate (DreamerV3 paper: 1e-4 for the world model)")
    eps: float = _f(1e-8, "Adam epsilon")
    grad_clip: float = _f(1000.0, "clip the global grad norm to this value (<= 0: no clipping)")
    weight_decay: float = _f(0.0, "decoupled weight decay (AdamW style); 0 is plain Adam")


@dataclass(frozen=True)
class WorldModelConfig:
    """Everything the world model needs."""

    encoder: EncoderConfig = _sub(EncoderConfig, "observation encoders")
    decoder: DecoderConfig = _sub(DecoderConfig, "reconstruction decoders")
    rssm: RSSMConfig = _sub(RSSMConfig, "recurrent state-space model")
    heads: HeadsConfig = _sub(HeadsConfig, "reward and continue heads")
    loss: LossConfig = _sub(LossConfig, "loss scales and free bits")
    optim: OptimConfig = _sub(OptimConfig, "optimizer")
    norm: Literal["layer", "rms"] = _f("layer", "normalisation in MLPs and conv layers")


@dataclass(frozen=True)
class ActorCriticConfig:
    """Actor-critic learning in imagination (DreamerV3's recipe)."""

    horizon: int = _f(15, "H: imagination horizon in steps")
    starts: int = _f(0, "replayed states that start imagined rollouts, a random subset (0: all B*T)")
    actor_grad: Literal["auto", "reinforce", "dynamics"] = _f(
        "reinforce", "actor gradient: REINFORCE, backprop through the model (continuous only), or auto "
        "(dynamics for continuous, reinforce for discrete, as DreamerV3's first code release)")
    lambda_: float = _f(0.95, "lambda of the TD(lambda) returns")
    discount: float = _f(1 - 1 / 333, "discount per step (DreamerV3: 1 - 1/333)")
    entropy: float = _f(3e-4, "actor entropy bonus scale")
    units: int = _f(256, "units of the actor and critic MLPs")
    layers: int = _f(3, "hidden layers of the actor and critic MLPs")
    bins: int = _f(255, "two-hot bins of the critic, uniform in symlog space")
    bin_range: float = _f(20.0, "critic bins span [-bin_range, bin_range] in symlog space")
    min_std: float = _f(0.1, "smallest std of the bounded normal (continuous actions)")
    max_std: float = _f(1.0, "largest std of the bounded normal (continuous actions)")
    unimix: float = _f(0.01, "uniform mixture in the categorical policy (discrete actions)")
    actor_lr: float = _f(3e-5, "actor learning rate (DreamerV3 paper: 3e-5)")
    critic_lr: float = _f(3e-5, "critic learning rate (DreamerV3 paper: 3e-5)")
    eps: float = _f(1e-5, "Adam epsilon of actor and critic")
    grad_clip: float = _f(100.0, "clip actor and critic grad norms to this value")
    slow_rate: float = _f(0.02, "fraction the slow critic moves towards the critic per update")
    slow_reg: float = _f(1.0, "scale of the critic's regulariser towards the slow critic")
    replay_value: float = _f(0.0, "scale of a critic loss on lambda returns of the replayed sequences (real "
                                  "rewards, bootstrapped with the critic); DreamerV3's 2024 code: 0.3; 0: off")
    return_decay: float = _f(0.99, "EMA decay of the return percentiles")
    return_low: float = _f(5.0, "lower percentile of the return range")
    return_high: float = _f(95.0, "upper percentile of the return range")


@dataclass(frozen=True)
class AgentConfig:
    """Top-level config: what a run saves beside itself."""

    world_model: WorldModelConfig = _sub(WorldModelConfig, "world model")
    actor_critic: ActorCriticConfig = _sub(ActorCriticConfig, "actor-critic learning in imagination")
    device: str = _f("cpu", "torch device, e.g. cpu or cuda; nothing assumes CUDA")
    precision: Literal["float32", "bf16"] = _f("float32", "bf16 = torch.autocast to bfloat16, CUDA only")
    seed: int = _f(0, "seed of parameter initialisation and of the model's sampling generator")


# --------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class EnvConfig:
    """Which task a run trains on and how it is observed (see envs.make)."""

    spec: str = _f("dmc:cartpole-balance", "env spec: dmc:<domain>-<task> or gym:<id>")
    obs: Literal["pixels", "state", "both"] = _f("state", "observation: image, state vector, or both")
    size: int = _f(64, "image height and width")
    action_repeat: int = _f(2, "simulator steps per agent step (DreamerV3 on DMC: 2)")
    render_quality: Literal["fast", "full"] = _f("fast", "fast: no shadows or multisampling (much faster on CPU)")
    camera: str = _f("", "camera id or name; empty: the task's default")
    num_envs: int = _f(1, "parallel training envs (subprocesses when > 1)")
    eval_envs: int = _f(1, "parallel evaluation envs")

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``envs.make`` and ``envs.make_vec`` (after the spec) for this section."""
        camera = None if self.camera == "" else (int(self.camera) if self.camera.isdigit() else self.camera)
        return dict(obs=self.obs, size=self.size, action_repeat=self.action_repeat,
                    render_quality=self.render_quality, camera=camera)


@dataclass(frozen=True)
class ReplayConfig:
    """Sequence replay (agent.replay)."""

    capacity: int = _f(250_000, "steps held (images are uint8: 12 KB a step at 64x64)")
    chunk: int = _f(256, "steps per stored chunk; must be >= train.batch_length")
    policy: Literal["fifo", "reservoir", "mix"] = _f(
        "fifo", "fifo ring buffer, reservoir over the whole run, or mix: recent FIFO + reservoir")
    recent_capacity: int = _f(50_000, "mix only: steps held by the recent FIFO part")
    recent_fraction: float = _f(0.5, "mix only: fraction of each batch drawn from the recent part")


@dataclass(frozen=True)
class TrainConfig:
    """Schedule of a run; env steps count simulator steps (action repeat included)."""

    steps: int = _f(100_000, "env steps to train for")
    prefill: int = _f(2_500, "env steps of uniformly random actions before training starts")
    train_ratio: float = _f(512.0, "replayed steps per agent step (DreamerV3's knob)")
    batch_size: int = _f(16, "B: sequences per batch")
    batch_length: int = _f(64, "T: steps per sequence")
    log_every: int = _f(1_000, "env steps between scalar logs")
    eval_every: int = _f(10_000, "env steps between evaluations (0: only at the end)")
    eval_episodes: int = _f(5, "episodes per evaluation with the deterministic policy (0: none)")
    video_every: int = _f(25_000, "env steps between open-loop prediction videos (0: never)")
    checkpoint_every: int = _f(10_000, "env steps between checkpoints (one more at the end)")
    threads: int = _f(0, "torch CPU threads (0: all cores)")


PLASTICITY_MODULES = ("encoder", "rssm", "actor", "critic")


@dataclass(frozen=True)
class PlasticityConfig:
    """Methods that keep the networks trainable (agent.plasticity), applied by the loop to whole modules.

    Defaults: shrink 0.4 and perturb 0.1 are the shrink-perturb authors' (Ash and Adams 2020; their code,
    JordanAsh/warm_start run.py); tau 0.025 is the threshold of the dormant fraction the benchmarks report
    (benchmarks.plasticity), so ReDo recycles exactly the units counted there as dormant.
    """

    method: Literal["none", "shrink_perturb", "redo"] = _f(
        "none", "none, shrink_perturb (theta <- shrink * theta + perturb * fresh init) or redo (recycle dormant units)")
    every: int = _f(0, "apply every this many updates; 0: only at task boundaries (benchmarks.continual), so a "
                       "single-task run never applies it")
    modules: tuple[str, ...] = _f(PLASTICITY_MODULES, "modules it applies to, a subset of encoder, rssm, actor, "
                                                      "critic (comma-separated on the command line)")
    shrink: float = _f(0.4, "shrink_perturb: lambda, the factor on the current parameters")
    perturb: float = _f(0.1, "shrink_perturb: sigma, the factor on a freshly initialised copy's parameters")
    tau: float = _f(0.025, "redo: a unit whose score (mean |activation| over the layer's mean) is <= tau is recycled")


@dataclass(frozen=True)
class RunConfig:
    """A whole training run: env, replay, schedule and agent. Saved as config.json beside the run."""

    env: EnvConfig = _sub(EnvConfig, "environment")
    replay: ReplayConfig = _sub(ReplayConfig, "replay buffer")
    train: TrainConfig = _sub(TrainConfig, "schedule")
    agent: AgentConfig = _sub(AgentConfig, "agent")
    plasticity: PlasticityConfig = _sub(PlasticityConfig, "methods that keep the networks trainable")



# --------------------------------------------------------------------------------------------- presets


def _sized(deter: int, hidden: int, classes: int, cnn_depth: int, units: int, blocks: int = 8) -> AgentConfig:
    """An AgentConfig for one row of the size table.

    The patch encoder is sized to the CNN encoder's FLOPs, as in the `cpu` preset: tokens of width
    4 x cnn_depth with an MLP of twice that. Its forward then costs 0.79-0.90x the CNN's FLOPs per frame
    from 12m to 200m (`python -m benchmarks.world_model --flops --no-equal-flops --preset 12m`); at width
    8 x cnn_depth with an MLP of four times that it cost 4.3x at 12m (61.5 against 14.2 MFLOP)."""
    width = 4 * cnn_depth
    return AgentConfig(
        world_model=WorldModelConfig(
            encoder=EncoderConfig(width=width, heads=max(1, width // 32), mlp_ratio=2, cnn_depth=cnn_depth,
                                  mlp_units=units),
            decoder=DecoderConfig(cnn_depth=cnn_depth, mlp_units=units, patch_width=4 * cnn_depth),
            rssm=RSSMConfig(deter=deter, hidden=hidden, classes=classes, blocks=blocks),
            heads=HeadsConfig(units=units),
        ),
        actor_critic=ActorCriticConfig(units=units),
    )


def _debug() -> AgentConfig:
    """Tiny: a full update at B=2, T=8 on 64x64 pixels takes a small fraction of a second on a CPU."""
    wm = WorldModelConfig(
        encoder=EncoderConfig(
            width=32, depth=1, heads=2, mlp_ratio=2, pool_queries=2, cnn_depth=4, mlp_units=32, mlp_layers=1
        ),
        decoder=DecoderConfig(
            cnn_depth=4, patch_width=16, patch_depth=0, patch_heads=1, mlp_units=32, mlp_layers=1
        ),
        rssm=RSSMConfig(deter=64, hidden=32, stoch=4, classes=4, blocks=2, prior_layers=1),
        heads=HeadsConfig(units=32, layers=1),
    )
    return AgentConfig(world_model=wm, actor_critic=ActorCriticConfig(units=32, layers=1))


def _cpu() -> AgentConfig:
    """Lean, for learning runs on one CPU core: the agent settings of the DMC proprio suite and of the CPU
    default job (one configuration for every task).

    Where it departs from DreamerV3's current public code (danijar/dreamerv3, configs.yaml and agent.py,
    2024-12), and why:
    - Size: deter 256, hidden 128, 16 x 16 latents, MLPs of 128 units (2 layers in actor and critic);
      DreamerV3's current code runs DMC proprio with its 1M model (deter 512, hidden 64, 32 x 4 latents,
      64 units). Ours is what one CPU core updates ~25K times in 2 hours.
    - Imagination starts from 256 random replayed states per update, not all B*T: the actor-critic
      update is most of an update's cost here.
    - Optimizer: Adam per module group (world model lr 1e-4, eps 1e-8, global clip 1000; actor 1e-4 and
      critic 3e-4, eps 1e-5, clip 100) instead of one LaProp at lr 4e-5 with adaptive gradient clipping
      (0.3) and a 1000-update warm-up. The higher actor and critic rates make up for far fewer updates
      than DreamerV3 makes (its critic has to carry returns over a 333-step horizon); the critic rate
      came from cartpole-balance ablations (README) and is the suite's, not a per-task choice.
    - Return targets: lambda returns bootstrapped from the fast critic (as DreamerV3), the slow critic as
      a regulariser (slow_reg 1.0, rate 0.02).
    - Replay-value loss 0.3 (DreamerV3's repval), but bootstrapped from the critic on detached replayed
      states, where DreamerV3 bootstraps from the imagined return and lets it train the world model.
    - Normalisation: LayerNorm (DreamerV3: RMSNorm); a learned initial state (DreamerV3: zeros).
    Found after the DMC proprio suite had begun with this preset, and left as they are so that every run of
    the suite shares one configuration (should a task stay below DreamerV3, these are the first to change,
    in the default, with the whole suite rerun):
    - Two-hot targets of the reward head and critic: weights split in symlog space and predictions decoded
      as symexp of the expected symlog bin (the 2023 paper's form). DreamerV3's current code places its
      bins at symexp-spaced raw values, splits weights and takes the expectation in raw space. Ours is
      biased low wherever the predicted distribution is spread (Jensen): at its optimum an even mix of 0
      and 1 decodes to 0.41, of 50 and 150 to 87. On pendulum_swingup's final checkpoints the two decodings
      differ by a few percent (README, DMC proprio suite).
    - The actor's output layer has PyTorch's default initialisation (DreamerV3 scales it by 0.01).
    - Replayed windows start from the initial state; DreamerV3 stores latents in the replay and continues
      from them (replay_context 1), and also trains once on each fresh sequence (an online queue).
    - The GRU's hidden-layer norm is per block (DreamerV3 normalises the whole deter vector); 2,500 env
      steps of uniformly random actions before the first update (DreamerV3 acts with its initial policy).
    The reference curves (scores/ of danijar/dreamerv3, added 2023-05-06 at 423291a) come from the code
    of that time, not the current one. Its configs.yaml there has: DMC action repeat 2; dmc_proprio at
    train ratio 512 with deter 512 and MLPs of 2 x 512 units; Adam with our world-model settings (lr 1e-4,
    eps 1e-8, clip 1000) and actor and critic at lr 3e-5 (eps 1e-5, clip 100); LayerNorm and a learned
    initial state; the symlog two-hot of the 2023 paper; the actor's output at outscale 1.0; and, for
    continuous actions, the actor trained by backpropagating returns through the model (actor_grad_cont:
    backprop; ours: ``actor_grad``, REINFORCE here, as the current code does for every action space).
    So the two-hot form and the actor's initialisation listed above are the curves' code's own, and its
    actor gradient for continuous actions is not ours.
    Schedules (action repeat, train ratio, batch length) belong to the run, not the preset: see the
    learning benchmark's suites.
    """
    wm = WorldModelConfig(
        # mlp_ratio 2: the tubelet encoder then costs fewer FLOPs per frame than the CNN at depth 16 (35 against
        # 41 MFLOP forward + backward) and about as much time (README, speed).
        encoder=EncoderConfig(width=64, heads=2, mlp_ratio=2, cnn_depth=16, mlp_units=128, mlp_layers=2),
        decoder=DecoderConfig(cnn_depth=16, patch_width=32, mlp_units=128, mlp_layers=2),
        rssm=RSSMConfig(deter=256, hidden=128, stoch=16, classes=16, blocks=4),
        heads=HeadsConfig(units=128),
    )
    ac = ActorCriticConfig(units=128, layers=2, starts=256, actor_lr=1e-4, critic_lr=3e-4, replay_value=0.3)
    return AgentConfig(world_model=wm, actor_critic=ac)


PRESETS: dict[str, AgentConfig] = {
    "debug": _debug(),
    "cpu": _cpu(),
    "small": _sized(deter=512, hidden=128, classes=16, cnn_depth=16, units=128, blocks=4),
    "12m": _sized(2048, 256, 16, 16, 256),
    "25m": _sized(3072, 384, 24, 24, 384),
    "50m": _sized(4096, 512, 32, 32, 512),
    "100m": _sized(6144, 768, 48, 48, 768),
    "200m": _sized(8192, 1024, 64, 64, 1024),
}


def preset(name: str) -> AgentConfig:
    """The preset called `name`, with a close-match suggestion when it does not exist."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------- helpers


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _unknown(path: str, names: list[str]) -> ValueError:
    name = path.rsplit(".", 1)[-1]
    return ValueError(f"{path}: unknown field {name!r}{_suggest(name, names)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A nested plain dict (JSON/YAML friendly) of a config dataclass."""
    return dataclasses.asdict(cfg)


def config_diff(a: dict[str, Any], b: dict[str, Any], skip: typing.Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted field, value in ``a``, value in ``b``) for every field where two ``config_to_dict`` dicts
    differ, in field order; fields in ``skip``, or under a section in it, are left out."""
    skip = tuple(skip)
    out = []
    for key in dict.fromkeys([*a, *b]):
        if key in skip:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = tuple(s[len(key) + 1:] for s in skip if s.startswith(key + "."))
            out += [(f"{key}.{k}", u, v) for k, u, v in config_diff(x, y, inner)]
        elif x != y:
            out.append((key, x, y))
    return out


def config_from_dict(d: dict[str, Any], cls: type = AgentConfig, where: str = "") -> Any:
    """Build the dataclass `cls` from a nested dict (a parsed JSON file). Unknown keys and values of the
    wrong type raise ValueError naming the field (after `where`, e.g. a file name); missing keys keep
    their defaults (so configs saved by older versions still load). Fields may be bool, int, float, str,
    dict, a Literal, a nested dataclass, or a tuple of one of these (a list in the dict)."""
    return _from_dict(d, cls, prefix=f"{where}." if where else "")


def _from_dict(d: dict[str, Any], cls: type, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping for {cls.__name__}, got {d!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in d if key not in names]
    if unknown:
        raise _unknown(f"{prefix}{unknown[0]}", names)
    return cls(**{key: _check_value(value, hints[key], f"{prefix}{key}") for key, value in d.items()})


def _check_value(value: Any, typ: Any, path: str) -> Any:
    """Accept `value` for a field of type `typ` (ints for floats too, lists for tuples), or raise ValueError."""
    if dataclasses.is_dataclass(typ):
        return _from_dict(value, typ, prefix=f"{path}.")
    if typing.get_origin(typ) is Literal:
        if value not in typing.get_args(typ):
            raise ValueError(f"{path}: {value!r} is not one of {list(typing.get_args(typ))}")
        return value
    if typing.get_origin(typ) is tuple:  # tuple[X, ...]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return tuple(_check_value(v, typing.get_args(typ)[0], f"{path}[{i}]") for i, v in enumerate(value))
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ in (str, dict):
        ok = isinstance(value, typ)
    else:
        raise ValueError(f"{path}: unsupported field type {typ!r}")
    if not ok:
        raise ValueError(f"{path}: expected {typ.__name__}, got {value!r}")
    return value


def _parse_value(text: str, typ: Any, path: str) -> Any:
    """Parse a command-line string for a field of type `typ`."""
    try:
        if typing.get_origin(typ) is Literal:
            return _check_value(text, typ, path)
        if typing.get_origin(typ) is tuple:  # tuple[X, ...]: comma-separated, "" for an empty tuple
            item = typing.get_args(typ)[0]
            return tuple(_parse_value(part.strip(), item, f"{path}[{i}]")
                         for i, part in enumerate(text.split(",")) if text.strip())
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
    except ValueError as e:
        raise ValueError(f"bad value {text!r} for {path} ({_type_name(typ)}): {e}") from None
    raise ValueError(f"{path}: unsupported field type {typ!r}")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(typ)))
    return getattr(typ, "__name__", str(typ))


def apply_overrides(cfg: Any, overrides: typing.Sequence[str]) -> Any:
    """Return a new config with `"dotted.field=value"` overrides applied in order.

    Values are parsed according to the field's type (bool accepts true/false/1/0/yes/no). An unknown
    field raises ValueError naming it with close-match suggestions; an unparsable value raises
    ValueError naming the field and its type. The input config is not modified.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form dotted.field=value")
        key, text = item.split("=", 1)
        cfg = _override(cfg, key.strip().split("."), text.strip(), path="")
    return cfg


def _override(cfg: Any, parts: list[str], text: str, path: str) -> Any:
    name, rest = parts[0], parts[1:]
    full = f"{path}{name}"
    names = [f.name for f in dataclasses.fields(cfg)]
    if name not in names:
        raise _unknown(full, names)
    typ = _hints(type(cfg))[name]
    if dataclasses.is_dataclass(typ):
        if not rest:
            raise ValueError(f"{full!r} is a section; override one of its fields, e.g. {full}.<field>=...")
        return dataclasses.replace(cfg, **{name: _override(getattr(cfg, name), rest, text, f"{full}.")})
    if rest:
        raise ValueError(f"{full!r} is a value, not a section; cannot override {full}.{'.'.join(rest)}")
    return dataclasses.replace(cfg, **{name: _parse_value(text, typ, full)})


def validate(cfg: AgentConfig, image_shape: tuple[int, int, int] | None = None, prefix: str = "") -> AgentConfig:
    """Check value ranges and cross-field constraints; raise ValueError naming the field. Returns cfg.

    `image_shape` (H, W, C), when known, enables the checks that depend on the image size; `prefix` is
    the config's place in a larger one (``agent.`` in a run config), for the field names in errors.
    """
    _raise(_agent_errors(cfg, image_shape, prefix))
    return cfg


def _raise(errors: list[str]) -> None:
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


def _positive(section: Any, prefix: str, names: typing.Iterable[str]) -> list[str]:
    return [f"{prefix}.{n}: must be positive, got {getattr(section, n)}" for n in names if getattr(section, n) <= 0]


def _non_negative(section: Any, prefix: str, names: typing.Iterable[str]) -> list[str]:
    return [f"{prefix}.{n}: must be >= 0, got {getattr(section, n)}" for n in names if getattr(section, n) < 0]


def _check(ok: bool, name: str, msg: str) -> list[str]:
    return [] if ok else [f"{name}: {msg}"]


def _agent_errors(cfg: AgentConfig, image_shape: tuple[int, int, int] | None, prefix: str) -> list[str]:
    wm, at = cfg.world_model, f"{prefix}world_model"
    return [*_encoder_errors(wm.encoder, image_shape, f"{at}.encoder"),
            *_decoder_errors(wm.decoder, wm.encoder.patch, image_shape, f"{at}.decoder"),
            *_rssm_errors(wm.rssm, f"{at}.rssm"), *_heads_errors(wm.heads, f"{at}.heads"),
            *_positive(wm.optim, f"{at}.optim", ["lr", "eps"]),
            *_non_negative(wm.loss, f"{at}.loss", ["free_nats", "image", "state", "reward", "continue_", "dyn", "rep"]),
            *_actor_critic_errors(cfg.actor_critic, f"{prefix}actor_critic"),
            *_check(cfg.precision != "bf16" or cfg.device.startswith("cuda"), f"{prefix}precision",
                    f"bf16 autocast is CUDA only, but device={cfg.device!r}")]


def _cnn_errors(used: bool, min_res: int, image_shape: tuple[int, int, int] | None, name: str) -> list[str]:
    """A CNN halving the resolution down to `min_res` needs square images of `min_res` * a power of two."""
    if not used or image_shape is None:
        return []
    H, W, _ = image_shape
    ok = H == W and min_res <= H and (H // min_res) & (H // min_res - 1) == 0 and H % min_res == 0
    return _check(ok, name, f"{H}x{W} must be square and {min_res} * a power of two")


def _encoder_errors(e: EncoderConfig, image_shape: tuple[int, int, int] | None, at: str) -> list[str]:
    errors = _positive(e, at, ["tubelet_frames", "patch", "width", "depth", "heads", "mlp_ratio", "pool_queries",
                               "cnn_depth", "cnn_min_res", "mlp_units", "mlp_layers"])
    errors += _check(e.width % 4 == 0, f"{at}.width", f"must divide by 4 (2D sin-cos), got {e.width}")
    errors += _check(e.width % e.heads == 0, f"{at}.width", f"must divide by encoder.heads={e.heads}, got {e.width}")
    if image_shape is not None and e.kind == "patch":
        H, W, _ = image_shape
        errors += _check(H % e.patch == 0 and W % e.patch == 0, f"{at}.patch",
                         f"{e.patch} must divide the image size {H}x{W}")
    return errors + _cnn_errors(e.kind == "cnn", e.cnn_min_res, image_shape, f"{at}.cnn_min_res")


def _decoder_errors(d: DecoderConfig, patch: int, image_shape: tuple[int, int, int] | None, at: str) -> list[str]:
    """`patch`: the encoder's patch size, which the patch decoder shares."""
    errors = _positive(d, at, ["cnn_depth", "cnn_min_res", "patch_width", "patch_heads", "mlp_units", "mlp_layers"])
    errors += _check(d.patch_depth >= 0, f"{at}.patch_depth", "must be >= 0")
    errors += _check(d.patch_width % 4 == 0, f"{at}.patch_width", "must divide by 4 (2D sin-cos)")
    errors += _check(d.patch_width % d.patch_heads == 0, f"{at}.patch_width", "must divide by patch_heads")
    if image_shape is not None and d.kind == "patch":
        H, W, _ = image_shape
        errors += _check(H % patch == 0 and W % patch == 0, at.rsplit(".", 1)[0] + ".encoder.patch",
                         f"the patch decoder uses encoder.patch={patch}, which must divide {H}x{W}")
    return errors + _cnn_errors(d.kind == "cnn", d.cnn_min_res, image_shape, f"{at}.cnn_min_res")


def _rssm_errors(r: RSSMConfig, at: str) -> list[str]:
    return [*_positive(r, at, ["deter", "hidden", "stoch", "classes", "blocks", "dyn_layers", "prior_layers",
                               "posterior_layers"]),
            *_check(r.deter % r.blocks == 0, f"{at}.deter", f"must divide by rssm.blocks={r.blocks}"),
            *_check(0.0 <= r.unimix < 1.0, f"{at}.unimix", f"must be in [0, 1), got {r.unimix}")]


def _heads_errors(h: HeadsConfig, at: str) -> list[str]:
    return [*_positive(h, at, ["bins", "bin_range", "units"]),
            *_check(h.layers >= 0, f"{at}.layers", "must be >= 0"),
            *_check(h.bins >= 3 and h.bins % 2 == 1, f"{at}.bins", "must be odd and >= 3 (a bin at 0)")]


def _actor_critic_errors(ac: ActorCriticConfig, at: str) -> list[str]:
    return [*_positive(ac, at, ["horizon"]), *_non_negative(ac, at, ["starts"]),
            *_check(0 < ac.discount <= 1, f"{at}.discount", f"must be in (0, 1], got {ac.discount}"),
            *_check(0 <= ac.lambda_ <= 1, f"{at}.lambda_", f"must be in [0, 1], got {ac.lambda_}"),
            *_check(0 < ac.min_std <= ac.max_std, f"{at}.min_std",
                    f"need 0 < min_std <= max_std, got {ac.min_std}, {ac.max_std}")]


def default_job(cuda: bool) -> RunConfig:
    """The main job (``make train``): a short real run that shows learning within minutes.

    CPU: state-based ``gym:Pendulum-v1`` with the lean ``cpu`` preset (about 10 minutes on 2 cores).
    CUDA: pixel ``dmc:cartpole-swingup`` through the patch encoder with the ``small`` preset.
    """
    if cuda:
        agent = dataclasses.replace(preset("small"), device="cuda")
        return RunConfig(env=EnvConfig(spec="dmc:cartpole-swingup", obs="pixels"), agent=agent,
                         train=TrainConfig(steps=100_000, eval_every=10_000))
    return RunConfig(env=EnvConfig(spec="gym:Pendulum-v1", obs="state"), agent=preset("cpu"),
                     train=TrainConfig(steps=15_000, prefill=2_000, train_ratio=256, batch_length=32,
                                       eval_every=1_000, eval_episodes=3, checkpoint_every=5_000, video_every=5_000))


def validate_run(cfg: RunConfig) -> RunConfig:
    """Check a run config (ranges and cross-field constraints), its agent included; errors name the field."""
    env, replay, train = cfg.env, cfg.replay, cfg.train
    _raise([*_positive(env, "env", ["size", "action_repeat", "num_envs", "eval_envs"]),
            *_positive(replay, "replay", ["capacity", "chunk"]),
            *_check(replay.chunk >= train.batch_length, "replay.chunk",
                    f"must be >= train.batch_length={train.batch_length}, got {replay.chunk}"),
            *_check(replay.capacity >= 2 * replay.chunk, "replay.capacity",
                    f"must hold two chunks of {replay.chunk}, got {replay.capacity}"),
            *_check(0 <= replay.recent_fraction <= 1, "replay.recent_fraction",
                    f"must be in [0, 1], got {replay.recent_fraction}"),
            *_positive(train, "train", ["steps", "train_ratio", "batch_size", "batch_length", "log_every"]),
            *_non_negative(train, "train", ["prefill", "eval_every", "eval_episodes", "video_every",
                                            "checkpoint_every", "threads"]),
            *_agent_errors(cfg.agent, None, "agent."), *_plasticity_errors(cfg.plasticity, "plasticity")])
    return cfg


def _plasticity_errors(p: PlasticityConfig, at: str) -> list[str]:
    methods = typing.get_args(_hints(PlasticityConfig)["method"])
    unknown = [m for m in p.modules if m not in PLASTICITY_MODULES]
    return [*_check(p.method in methods, f"{at}.method", f"{p.method!r} is not one of {list(methods)}"),
            *_non_negative(p, at, ["every", "perturb"]),
            *_check(not unknown, f"{at}.modules",
                    f"unknown module(s) {unknown}; choose from {list(PLASTICITY_MODULES)}"),
            *_check(bool(p.modules), f"{at}.modules", f"must name at least one of {list(PLASTICITY_MODULES)}"),
            *_check(len(set(p.modules)) == len(p.modules), f"{at}.modules", f"names a module twice: {list(p.modules)}"),
            *_check(0 <= p.shrink <= 1, f"{at}.shrink", f"must be in [0, 1], got {p.shrink}"),
            *_check(0 <= p.tau < 1, f"{at}.tau", f"must be in [0, 1) (a score of 1 is the layer's average "
                                                  f"unit), got {p.tau}")]
