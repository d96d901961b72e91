"""Training: losses, the three stages, checkpoints, distributed execution.

Public API (import from the submodules; nothing heavy is imported here):

    config.load_config(preset_or_yaml, overrides) -> TrainConfig     presets: demo-cpu, paper
    stages.train_stage1 / train_stage2 / train_stage3(...) -> loop.StageResult
    stages.export_model(config, stage1_dir, stage3_dir, model_dir)  Restorer model directory
    backbone.make_random_backbone(preset, out_dir, size, seed)      offline random encoders
    feature_cache.FeatureCache, losses.feature_cleaner_loss, checkpoint.save/load_checkpoint

See docs/training.md.
"""
