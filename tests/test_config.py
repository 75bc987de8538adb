"""Config presets, overrides, dict round trips and validation."""

import dataclasses

import pytest

from agent.config import (
    PRESETS,
    AgentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    preset,
    validate,
)


def _all_fields(cfg):
    for f in dataclasses.fields(cfg):
        yield type(cfg).__name__, f
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _all_fields(value)


def test_every_field_has_a_help_string_and_presets_validate():
    for name, cfg in PRESETS.items():
        validate(cfg, image_shape=(64, 64, 3))
        for owner, f in _all_fields(cfg):
            assert f.metadata.get("help"), f"{owner}.{f.name} has no help string"
        assert config_from_dict(config_to_dict(cfg)) == cfg, name


def test_size_table_follows_dreamerv3():
    table = {"12m": (2048, 256, 16, 16, 256), "25m": (3072, 384, 24, 24, 384),
             "50m": (4096, 512, 32, 32, 512), "100m": (6144, 768, 48, 48, 768),
             "200m": (8192, 1024, 64, 64, 1024)}
    for name, (deter, hidden, classes, depth, units) in table.items():
        wm = PRESETS[name].world_model
        assert (wm.rssm.deter, wm.rssm.hidden, wm.rssm.classes, wm.encoder.cnn_depth, wm.heads.units) == (
            deter, hidden, classes, depth, units)
        assert wm.rssm.stoch == 32 and wm.decoder.cnn_depth == depth
        # the patch encoder sized to the CNN's FLOPs (ours; DreamerV3 has no patch encoder)
        assert (wm.encoder.width, wm.encoder.mlp_ratio) == (4 * depth, 2)


def test_apply_overrides_parses_by_type_and_returns_a_new_config():
    base = preset("debug")
    cfg = apply_overrides(base, ["world_model.rssm.deter=512", "world_model.encoder.kind=cnn",
                                 "world_model.rssm.compile=true", "world_model.optim.lr=3e-4", "seed=7"])
    assert cfg.world_model.rssm.deter == 512 and cfg.world_model.encoder.kind == "cnn"
    assert cfg.world_model.rssm.compile is True and cfg.world_model.optim.lr == 3e-4 and cfg.seed == 7
    assert base == preset("debug") and base.world_model.rssm.deter == 64  # untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


@pytest.mark.parametrize("override, words", [
    ("world_model.rssm.detr=5", ["world_model.rssm.detr", "deter"]),
    ("world_modle.rssm.deter=5", ["world_modle", "world_model"]),
    ("world_model.rssm.deter=abc", ["world_model.rssm.deter", "int", "abc"]),
    ("world_model.encoder.kind=mlp", ["world_model.encoder.kind", "patch", "cnn"]),
    ("world_model.rssm.compile=maybe", ["world_model.rssm.compile"]),
    ("world_model.rssm=5", ["section"]),
    ("seed", ["dotted.field=value"]),
])
def test_apply_overrides_errors_name_the_field(override, words):
    with pytest.raises(ValueError) as info:
        apply_overrides(AgentConfig(), [override])
    for word in words:
        assert word in str(info.value)


def test_config_from_dict_is_strict_but_fills_missing_defaults():
    d = config_to_dict(preset("small"))
    d["world_model"]["rssm"]["deter"] = 1024
    del d["world_model"]["heads"]
    cfg = config_from_dict(d)
    assert cfg.world_model.rssm.deter == 1024 and cfg.world_model.heads == AgentConfig().world_model.heads
    with pytest.raises(ValueError, match="world_model.rssm.unknown"):
        config_from_dict({"world_model": {"rssm": {"unknown": 1}}})
    with pytest.raises(ValueError, match="world_model.rssm.deter"):
        config_from_dict({"world_model": {"rssm": {"deter": "big"}}})


@pytest.mark.parametrize("override, field", [
    ("world_model.rssm.deter=100", "world_model.rssm.deter"),  # not divisible by 8 blocks
    ("world_model.encoder.patch=7", "world_model.encoder.patch"),  # does not divide 64
    ("world_model.rssm.hidden=0", "world_model.rssm.hidden"),
    ("world_model.rssm.unimix=1.5", "world_model.rssm.unimix"),
    ("precision=bf16", "precision"),  # CUDA only, device is cpu
])
def test_validate_names_the_bad_field(override, field):
    cfg = apply_overrides(AgentConfig(), [override])
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate(cfg, image_shape=(64, 64, 3))


def test_config_diff_names_nested_fields_and_skips_what_it_is_told():
    from agent.config import RunConfig, apply_overrides, config_diff, config_to_dict

    a = config_to_dict(RunConfig())
    b = config_to_dict(apply_overrides(RunConfig(), ["agent.actor_critic.critic_lr=0.5", "train.steps=7",
                                                     "train.prefill=3"]))
    assert config_diff(a, a) == []
    assert sorted(k for k, _, _ in config_diff(a, b)) == ["agent.actor_critic.critic_lr", "train.prefill",
                                                          "train.steps"]
    assert config_diff(a, b, skip=["train"]) == [("agent.actor_critic.critic_lr", a["agent"]["actor_critic"]
                                                  ["critic_lr"], 0.5)]
    assert [k for k, _, _ in config_diff(a, b, skip=["train.steps"])] == [
        k for k, _, _ in config_diff(a, b) if k != "train.steps"]
