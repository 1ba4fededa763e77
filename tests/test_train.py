"""Training loop: exact resume, atomic checkpoints, NaN stop, GAN stage, and a student that learns.

Tiny runs on procedural clips with the real TAEF2 teacher (weights via TURBO_VAED_ASSETS)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.student import TurboVAED
from train_vae import train as train_mod
from train_vae.data import make_procedural_clips
from train_vae.losses import ReconstructionLoss
from train_vae.metrics import psnr, to_unit


def argv(clips, out, **kw):
    """train.py's command line for a tiny run; ``kw`` adds or overrides flags."""
    args = ["--config", "taef2", "--data_dir", str(clips), "--output_dir", str(out), "--resolution", "32",
            "--num_frames", "3", "--num_holdout", "1", "--max_steps", "6", "--checkpoint_every", "3",
            "--log_every", "1", "--val_every", "3", "--report_to", "none", "--disc_start", "3",
            "--clips_per_video", "2", "--train_crop", "0", "--train_frames", "0",
            "--lpips_weight", "1", "--lpips_frames", "1"]  # the CPU demo trains without LPIPS; the tests keep it
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    return args


def settings(clips, out, **kw):
    return train_mod.parse_args(argv(clips, out, **kw))


def weights(out):
    return TurboVAED.from_pretrained(out / "student").state_dict()


def test_resume_after_interruption_gives_identical_weights(clips, tmp_path, monkeypatch):
    # random crops and colour transforms draw from the RNG that checkpoints restore
    crop = {"train_crop": 16, "train_frames": 2, "colour_augment": 0.5}
    train_mod.Trainer(settings(clips, tmp_path / "a", **crop)).fit()
    real_step = train_mod.Trainer.train_step

    def interrupted(self, it):
        if self.progress.step == 4:
            raise KeyboardInterrupt  # killed in the middle of the GAN stage
        return real_step(self, it)

    monkeypatch.setattr(train_mod.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mod.Trainer(settings(clips, tmp_path / "b", **crop)).fit()
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step_000003"
    monkeypatch.setattr(train_mod.Trainer, "train_step", real_step)
    train_mod.Trainer(settings(clips, tmp_path / "b", resume="latest", **crop)).fit()
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == [0, 1, 2, 3, 4, 5, 6]
    assert log_a[-1]["loss"] == log_b[-1]["loss"] and "d_loss" in log_a[-1]


def test_crash_during_checkpoint_keeps_latest_usable(clips, tmp_path, monkeypatch):
    real_save = TurboVAED.save_pretrained
    calls = {"n": 0}

    def flaky_save(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # second checkpoint dies half-written
            raise OSError("disk full")
        return real_save(self, *a, **k)

    monkeypatch.setattr(TurboVAED, "save_pretrained", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        train_mod.Trainer(settings(clips, tmp_path)).fit()
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_000003"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_000003"]
    monkeypatch.setattr(TurboVAED, "save_pretrained", real_save)
    result = train_mod.Trainer(settings(clips, tmp_path, resume="latest")).fit()
    assert result["step"] == 6 and (ckpt / "latest").read_text() == "step_000006"


def test_nan_loss_stops_before_checkpoint(clips, tmp_path, monkeypatch):
    real = ReconstructionLoss.forward
    count = {"n": 0}

    def poisoned(self, rec, target, *args, **kw):
        out = real(self, rec, target, *args, **kw)
        count["n"] += 1
        if count["n"] == 5:  # during step 5, after the step-3 checkpoint
            out["l1"] = out["l1"] * float("nan")
        return out

    monkeypatch.setattr(ReconstructionLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 4"):
        train_mod.Trainer(settings(clips, tmp_path)).fit()
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_000003"
    assert not (tmp_path / "student").exists()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 4 and all("nan" not in json.dumps(r).lower() for r in rows)


def test_gan_stage_keeps_generator_learning_rate(clips, tmp_path):
    """With a vanishing adversarial weight, a run in the GAN stage updates the generator exactly like a run
    without it: the generator loss is not divided differently once the discriminator trains."""
    common = dict(lpips_weight=0, max_steps=2, checkpoint_every=100, distill_weight=0)
    plain = train_mod.Trainer(settings(clips, tmp_path / "plain", disc_weight=0, **common))
    plain.fit()
    gan = train_mod.Trainer(settings(clips, tmp_path / "gan", disc_weight=1e-12, disc_start=0, **common))
    gan.fit()
    assert gan.use_gan and not plain.use_gan
    for (k, a), b in zip(plain.student.state_dict().items(), gan.student.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-7), k


def test_student_learns(clips, tmp_path):
    s = settings(clips, tmp_path, max_steps=60, val_every=20, checkpoint_every=60, disc_start=60, lr=2e-3,
                 warmup_steps=0, lr_schedule="constant", lpips_weight=0)
    trainer = train_mod.Trainer(s)
    result = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    val = [r["val_psnr"] for r in rows if "val_psnr" in r]
    # better than at the start, and better than the best content-free answer (mid-grey frames)
    grey = psnr(torch.full_like(trainer.val_video, 0.5), to_unit(trainer.val_video)).mean().item()
    assert val[-1] > val[0] + 1.0 and val[-1] > grey + 0.5, (val, grey)
    assert result["student_psnr"] == pytest.approx(val[-1], abs=1e-4)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    TurboVAED.from_pretrained(tmp_path / "student")  # loadable by users


def test_bad_settings_are_clear(clips, tmp_path):
    with pytest.raises(ValueError, match="has no public teacher"):
        train_mod.Trainer(train_mod.parse_args(["--config", "dcae", "--data_dir", str(clips)]))
    with pytest.raises(ValueError, match="train_crop 20 must be a multiple of 8"):
        t = train_mod.Trainer(settings(clips, tmp_path / "c", train_crop=20))
        t.latents_and_video(next(t.batches(0)))
    t = train_mod.Trainer(settings(clips, tmp_path / "d", train_frames=2))
    latents, video = t.latents_and_video(next(t.batches(0)))
    assert latents.shape[2] == video.shape[2] == 2  # TAEF2: one latent frame per video frame
    with pytest.raises(ValueError, match="colour_augment 1.5: the share of training clips"):
        train_mod.Trainer(settings(clips, tmp_path / "e", colour_augment=1.5))
    t.teacher.first_frame_alone = True
    with pytest.raises(ValueError, match="without a first frame alone"):
        t.latents_and_video(next(t.batches(0)))
    with pytest.raises(ValueError, match="need more than --num_holdout"):
        train_mod.Trainer(settings(clips, tmp_path, num_holdout=4))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        train_mod.Trainer(settings(empty, tmp_path / "o"))


def test_train_sh_starts_several_cpu_processes(clips, tmp_path):
    """``NUM_PROCESSES=2 bash train.sh`` on a machine without GPU trains with two gloo processes
    (``accelerate launch --cpu`` alone starts one and says nothing), on the single-process lr schedule
    (accelerate steps a prepared scheduler once per process unless told otherwise)."""
    repo = Path(__file__).resolve().parent.parent
    cmd = ["bash", str(repo / "train.sh"), *argv(clips, tmp_path / "ddp", max_steps=2, checkpoint_every=2, val_every=2,
                                                 lpips_weight=0, batch_size=1, lr=1e-3, lr_schedule="constant",
                                                 warmup_steps=10)]
    env = {**os.environ, "NUM_PROCESSES": "2", "CUDA_VISIBLE_DEVICES": "", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "final_metrics.json").read_text())
    assert result["num_processes"] == 2 and result["samples_per_step"] == 2 and result["step"] == 2
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "ddp" / "log.jsonl").read_text().splitlines())
           if "lr" in r}
    assert lrs[1] == pytest.approx(1e-3 * 2 / 10) and lrs[2] == pytest.approx(1e-3 * 3 / 10)  # warm-up step k+1 of 10
    assert (tmp_path / "ddp" / "student" / "config.json").is_file()


def test_loss_schedule_blends_phases_and_keeps_the_fixed_recipe():
    from train_vae.losses import LossSchedule
    s = LossSchedule([{"name": "a", "end": 0.5, "distill": 1.0, "teacher_l1": 1.0},
                      {"name": "b", "end": 1.0, "teacher_l1": 1.0, "lpips": 0.2}], max_steps=100, ramp=0.1)
    assert s(0) == {"l1": 0.0, "teacher_l1": 1.0, "lpips": 0.0, "distill": 1.0, "adv": 0.0}
    assert s(49)["distill"] == 1.0 and s(50)["distill"] == pytest.approx(0.9) and s(50)["lpips"] == pytest.approx(0.02)
    assert s(54)["distill"] == pytest.approx(0.5) and s(54)["lpips"] == pytest.approx(0.1)
    assert s(60) == s(99) == {"l1": 0.0, "teacher_l1": 1.0, "lpips": 0.2, "distill": 0.0, "adv": 0.0}
    assert [s.names[s.phase(k)] for k in (0, 49, 50, 99)] == ["a", "a", "b", "b"]
    assert s.uses("lpips") and not s.uses("adv")
    fixed = LossSchedule.fixed(10, lpips=1.0, distill=1.0, adv=0.05, disc_start=3)
    assert fixed(2) == {"l1": 1.0, "teacher_l1": 0.0, "lpips": 1.0, "distill": 1.0, "adv": 0.0}
    assert fixed(3)["adv"] == fixed(9)["adv"] == 0.05 and not LossSchedule.fixed(10, 1, 1, 0.05, 10).uses("adv")
    for phases, message in (([{"end": 0.5}], "must end at 1.0"), ([{"end": 0.6}, {"end": 0.4}], "must be after"),
                            ([{"end": 1.0, "kl": 1.0}], "unknown loss terms"),
                            ([{"end": 0.01}, {"end": 1.0}], "gets no step")):
        with pytest.raises(ValueError, match=message):
            LossSchedule(phases, 10)


# ---- the latent cache, resume from damaged checkpoints, paths from the caller's folder -----------------
def test_training_rebuilds_a_stale_cache_and_finishes_a_partial_one(clips, tmp_path, capsys):
    """The issue's case: the demo's cache in OUTPUT_DIR/latents, then a run on another folder with the same
    output folder trains on the new clips (it trained on the demo's before); a killed cache run is finished."""
    out = tmp_path / "run"
    train_mod.Trainer(settings(clips, out))
    assert "building 6 samples" in capsys.readouterr().err
    mine = tmp_path / "mine"
    make_procedural_clips(mine, num_clips=4, num_frames=12, size=(64, 64), seed=11)
    t = train_mod.Trainer(settings(mine, out))
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("latent cache")]
    assert len(line) == 1 and "rebuilding all 6 samples" in line[0] and f"-> {mine}" in line[0]
    assert t.train_set.manifest["data_dir"] == str(mine)
    # a cache run killed after some samples: manifest not complete, a sample missing
    manifest = json.loads((out / "latents" / "manifest.json").read_text())
    (out / "latents" / manifest["samples"][-1]["file"]).unlink()
    manifest.update(complete=False, samples=manifest["samples"][:-1])
    (out / "latents" / "manifest.json").write_text(json.dumps(manifest))
    t = train_mod.Trainer(settings(mine, out))
    assert "finishing it: writing 1 of 6 samples" in capsys.readouterr().err
    assert len(t.train_set) == 6 and t.train_set.manifest["complete"]
    train_mod.Trainer(settings(mine, out))
    assert "using its 6 samples" in capsys.readouterr().err


def test_resume_latest_falls_back_to_the_newest_intact_checkpoint(clips, tmp_path, capsys):
    out = tmp_path / "run"
    train_mod.Trainer(settings(clips, out, log_every=2, val_every=3, disc_start=6)).fit()
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3, 4, 6]  # validation on its own schedule, not only on log steps
    assert [r["step"] for r in rows if "val_psnr" in r] == [0, 3, 6]
    bad = out / "checkpoints" / "step_000006" / "pytorch_model.bin"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated, as by a full disk
    capsys.readouterr()
    trainer = train_mod.Trainer(settings(clips, out, log_every=2, val_every=3, disc_start=6, resume="latest"))
    err = capsys.readouterr().err
    assert f"checkpoint step_000006 is damaged ({bad}: not a complete torch file" in err
    assert "resuming from step_000003, the newest intact checkpoint" in err
    assert trainer.fit()["step"] == 6 and (out / "checkpoints" / "latest").read_text() == "step_000006"


def test_train_sh_takes_relative_paths_from_the_callers_folder(clips, tmp_path):
    """``cd elsewhere; bash path/to/train.sh --output_dir out`` writes to elsewhere/out, not into the repository."""
    import shutil
    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(clips, tmp_path / "vids")
    rel = argv("vids", "rel_out", max_steps=1, checkpoint_every=1, val_every=1, lpips_weight=0)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", os.path.relpath(repo / "train.sh", tmp_path), *rel], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rel_out" / "student" / "config.json").is_file()
    assert (tmp_path / "rel_out" / "latents" / "manifest.json").is_file()
    assert not (repo / "rel_out").exists() and not (repo / "vids").exists()
