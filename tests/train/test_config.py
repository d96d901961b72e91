from __future__ import annotations

import pytest

from miipher2.train.config import ConfigError, TrainConfig, available_presets, load_config


def test_presets_load_with_the_papers_schedule():
    assert {"demo-cpu", "paper"} <= set(available_presets())
    paper = load_config("paper")
    assert (paper.stage1.steps, paper.stage2.steps, paper.stage3.steps) == (800_000, 200_000, 675_000)
    assert paper.stage1.batch_size == paper.stage2.batch_size == paper.stage3.batch_size == 512
    assert paper.encoder.preset == "w2v-bert-2.0"
    demo = load_config("demo-cpu")
    assert demo.encoder.source.startswith("random:")


def test_overrides_are_typed_and_validated():
    config = load_config("demo-cpu", ["stage1.steps=7", "stage2.betas=[0.5, 0.9]", "cache.dir=/tmp/x",
                                      "encoder.feature_layer=null", "runtime.progress=false"])
    assert config.stage1.steps == 7 and config.stage2.betas == (0.5, 0.9)
    assert config.cache.dir == "/tmp/x" and config.encoder.feature_layer is None and not config.runtime.progress


@pytest.mark.parametrize("override, field", [
    ("stage1.steps=-5", "stage1.steps"),
    ("stage1.stepz=3", "stage1.stepz"),
    ("stage2.lr=fast", "stage2.lr"),
    ("data.num_workers=1.5", "data.num_workers"),
    ("runtime.precision=fp16", "runtime.precision"),
    ("stage3.betas=[0.9]", "stage3.betas"),
    ("vocoder.sample_rate=22050", "vocoder.sample_rate"),
    ("vocoder.kind=melgan", "vocoder.kind"),
    ("vocoder.iterations=3", "vocoder.iterations"),  # demo-cpu's kind is vocos: iterations are WaveFit's
    ("vocoder.upsample_initial_channel=64", "vocoder.upsample_initial_channel"),
    ("vocoder.discriminator=huge", "vocoder.discriminator"),
    ("stage2.feature_matching_weight=-1", "stage2.feature_matching_weight"),
    ("stage3.adversarial_start=-1", "stage3.adversarial_start"),
    ("stage1.eval_every=0", "stage1.eval_every"),
    ("validation.utterances=-1", "validation.utterances"),
    ("validation.examples=99", "validation.examples"),
    ("data.min_seconds=99", "data.min_seconds"),
    ("cache.enabled=yes please", "cache.enabled"),
    ("nonsense=1", "nonsense"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"\b{field.replace('.', r'.')}\b"):
        load_config("demo-cpu", [override])


def test_malformed_override_and_unknown_config():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo-cpu", ["stage1.steps"])
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("no-such-preset")


def test_yaml_file_inherits_from_a_preset_and_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo-cpu\nname: mine\nstage1:\n  steps: 3\n")
    config = load_config(path)
    assert config.name == "mine" and config.stage1.steps == 3
    assert config.stage2 == load_config("demo-cpu").stage2  # untouched sections come from the base
    assert TrainConfig.from_dict(__import__("yaml").safe_load(config.to_yaml())) == config


def test_wrong_section_type_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage1: 5\n")
    with pytest.raises(ConfigError, match="stage1: expected a mapping"):
        load_config(path)


def test_tracked_params_are_few_and_include_what_was_overridden():
    config = load_config("demo-cpu", ["stage1.lr=0.01", "stage2.log_every=3"])
    params = config.tracked_params("stage1", also=["stage1.lr", "stage2.log_every", "no.such.key"])
    assert params["stage1.lr"] == 0.01 and params["stage2.log_every"] == 3 and "no.such.key" not in params
    assert params["preset"] == "demo-cpu" and params["encoder.preset"] == config.encoder.preset
    assert params["validation.utterances"] == config.validation.utterances
    assert not any(key.startswith("stage3.") for key in params)  # another stage's settings are noise here
    assert len(params) < len(config.tracked_params()) < 40
