"""Training settings: one typed record (train_vae/settings.py) behind the flags, the config's train: section and
the run's outputs; --set for any config key; the per-teacher recipes; stage 2 from a finished stage 1."""
import json

import pytest
import torch
import yaml

from models.cli import run
from models.config import config_names, load_config
from train_vae import settings as settings_mod
from train_vae import train as train_mod

from test_train import settings


def _err(capsys, argv) -> str:
    rc = run(train_mod.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: "), err
    return err[-1]


def test_every_setting_has_help_and_a_flag_or_a_reason():
    ap = train_mod.build_parser()
    flags = {a.dest for a in ap._actions}
    for f in settings_mod.settings_fields():
        assert f.metadata["help"], f.name
        assert (f.name in flags) == f.metadata["cli"], f.name
    assert "--set" in ap.format_help()


def test_set_edits_any_config_key_typed(tmp_path):
    s = train_mod.parse_args(["--output_dir", str(tmp_path), "--set", "train.lr=1e-4", "student.depthwise_kernel_size=3",
                              "--set", "train.adam_betas=[0.8, 0.9]", "student.pixel_shuffle=interpolate"])
    assert s.lr == 1e-4 and isinstance(s.lr, float) and s.adam_betas == (0.8, 0.9)
    assert s.cfg["student"]["depthwise_kernel_size"] == 3 and s.cfg["student"]["pixel_shuffle"] == "interpolate"
    assert s.cfg["overrides"] == ["train.lr=1e-4", "student.depthwise_kernel_size=3", "train.adam_betas=[0.8, 0.9]",
                                  "student.pixel_shuffle=interpolate"]
    # the flag wins over --set train.KEY (flags come last)
    assert train_mod.parse_args(["--set", "train.max_steps=9", "--max_steps", "4"]).max_steps == 4


@pytest.mark.parametrize("item, words", [
    ("train.lrr=1", "no training setting 'lrr'"),
    ("train.max_steps=ten", "is not a valid max_steps (expected int)"),
    ("train.max_steps=1.5", "is not a valid max_steps"),
    ("student.depthwise_kernel=3", "has no key student.depthwise_kernel"),
    ("student.depthwise_blocks=3", "is a int, student.depthwise_blocks is a list"),
    ("studnet.x=1", "has no section studnet"),
    ("train.lr", "expected KEY=VALUE"),
])
def test_set_rejects_unknown_keys_and_bad_values_in_one_line(capsys, item, words):
    assert words in _err(capsys, ["--set", item])


def test_recipes_of_the_real_teachers():
    """The paper's recipe in each real teacher's train: section, read through the settings record."""
    for name in ("ltx", "hunyuan", "cogvideox", "wan"):
        cfg = load_config(name)
        s, _ = settings_mod.from_config(cfg)
        assert (s.num_frames, s.resolution, s.lr, s.adam_betas, s.ema_decay) == (17, 256, 2e-4, (0.9, 0.95), 0.999)
        assert (s.lpips_weight, s.distill_weight, s.mixed_precision, s.effective_batch) == (1.0, 1.0, "bf16", 32)
        assert s.disc_start is None  # stage 1: no GAN
        s2, _ = settings_mod.from_config(cfg, stage2=True)
        assert s2.disc_start == 0 and s2.disc_weight == 0.05 and s2.lr == 2e-4
    for name in config_names():  # every config's train: section is made of known settings of the right type
        settings_mod.from_config(load_config(name))


def test_every_entry_point_takes_the_clips_the_config_trains_on():
    """``clip_size``: the train: section's frames and size, else the config's frames and the default size; the
    default of generate_latents, validation_metrics, validation_videos, the tables and derivation."""
    assert settings_mod.clip_size(load_config("taef2")) == (17, 128)
    assert settings_mod.clip_size(load_config("ltx")) == (17, 256)
    assert settings_mod.clip_size(load_config("dcae")) == (16, settings_mod.TrainSettings.resolution)
    assert settings_mod.from_config(load_config("dcae"))[0].num_frames == 16


def test_effective_batch_sets_accumulation(capsys, tmp_path):
    s = train_mod.parse_args(["--config", "ltx", "--output_dir", str(tmp_path), "--batch_size", "2"])
    assert s.effective_batch == 32 and s.mixed_precision == ("bf16" if torch.cuda.is_available() else "no")
    assert train_mod.parse_args(["--config", "ltx", "--grad_accum", "3"]).effective_batch is None
    assert "pass one of them" in _err(capsys, ["--grad_accum", "2", "--effective_batch", "8"])


def test_flags_that_need_another_say_so_and_warn_when_given_alone(capsys, tmp_path):
    """Every setting in NEEDS says in its help what it needs, and a run given one without it says once that it does
    nothing (the run goes on); given with what it needs, nothing is said."""
    for name, (need, _, _) in settings_mod.NEEDS.items():
        field = next(f for f in settings_mod.settings_fields() if f.name == name)
        assert f"only with {need}" in field.metadata["help"], name
    capsys.readouterr()
    train_mod.parse_args(["--output_dir", str(tmp_path), "--disc_weight", "0.1", "--distill_weight", "0",
                          "--distill_head", "linear", "--phase_ramp", "0.1"])
    err = capsys.readouterr().err
    for name, need in (("disc_weight", "disc_start"), ("distill_head", "distill_weight"),
                       ("phase_ramp", "train.phases")):
        assert f"warning: {name} " in err and f"does nothing in this run: it needs {need}" in err, err
    train_mod.parse_args(["--output_dir", str(tmp_path), "--disc_weight", "0.1", "--disc_start", "5",
                          "--distill_head", "linear"])
    assert "does nothing" not in capsys.readouterr().err


def test_stage2_starts_from_the_stage1_student_with_a_fresh_discriminator(clips, tmp_path):
    """--init_from: the stage-1 EMA student is the stage-2 student and its EMA (decodes exactly alike at the
    first step), the optimizer and the discriminator start fresh, and the discriminator trains from there."""
    stage1 = train_mod.Trainer(settings(clips, tmp_path / "s1", max_steps=3, disc_start=3, lpips_weight=0))
    r1 = stage1.fit()
    assert not stage1.use_gan
    s2 = settings(clips, tmp_path / "s2", max_steps=2, disc_start=0, lpips_weight=0, init_from=tmp_path / "s1",
                  set="train.disc_lr=1e-3")
    assert s2.init_from == str(tmp_path / "s1")
    t2 = train_mod.Trainer(s2)
    z = t2.val_latents
    with torch.no_grad():
        want = stage1.ema_student()(z)
        assert torch.equal(t2.student(z), want) and torch.equal(t2.ema_student()(z), want)
    assert t2.use_gan and not t2.opt.state and not t2.disc_opt.state
    disc0 = {k: v.clone() for k, v in t2.disc.state_dict().items()}
    r2 = t2.fit()
    rows = [json.loads(x) for x in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["val_psnr"] == pytest.approx(r1["student_psnr"], abs=1e-5)
    assert all("d_loss" in r and "g_adv" in r for r in rows[1:])
    assert any(not torch.equal(disc0[k], v) for k, v in t2.disc.state_dict().items())
    # the resolved settings and config are recorded with the run
    assert r2["settings"]["init_from"] == str(tmp_path / "s1") and r2["settings"]["disc_lr"] == 1e-3
    recorded = yaml.safe_load((tmp_path / "s2" / "config.yaml").read_text())
    assert recorded["overrides"] == ["train.disc_lr=1e-3"] and recorded["train"]["disc_start"] == 0
    assert json.loads((tmp_path / "s2" / "final_metrics.json").read_text())["settings"]["max_steps"] == 2


def test_init_from_a_folder_without_student_is_one_line(capsys, tmp_path):
    assert "no student found" in _err(capsys, ["--init_from", str(tmp_path), "--output_dir", str(tmp_path / "o")])
