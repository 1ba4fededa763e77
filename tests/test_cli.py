"""Entry points fail early and briefly: every bad input below exits with code 2 and one or two lines
(``error: ...``), no traceback, before the teacher is loaded (the loader is replaced by one that fails the test)
and, for the settings checks, before the video folder is indexed. Also: one flag style, atomic writes, file checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.cli import ArgumentParser, UserError, run
from models.files import atomic_dir, atomic_file, atomic_write, file_problem
from train_vae import train as train_mod
from train_vae.data import make_procedural_clips

REPO = Path(__file__).resolve().parent.parent


def _no_teacher(*args, **kwargs):
    raise AssertionError("the teacher was loaded although the request is bad")


def _no_index(*args, **kwargs):
    raise AssertionError("the video folder was indexed although the settings are bad")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_clips")
    make_procedural_clips(d, num_clips=3, num_frames=12, size=(64, 64), seed=1)
    return d


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """A TAEF2 student (random weights), and a copy whose weights file is cut in half."""
    from models.config import build_student, load_config
    root = tmp_path_factory.mktemp("cli_students")
    build_student(load_config("taef2")).save_pretrained(root / "taef2")
    (root / "broken").mkdir()
    for f in (root / "taef2").iterdir():
        data = f.read_bytes()
        (root / "broken" / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    return root


def expect_user_error(capsys, main, argv) -> str:
    """Run ``main`` as its command line would; assert exit code 2 and a short message without traceback."""
    rc = run(main, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) <= 2, err
    return err


# ---- one flag style, --debug, run() ---------------------------------------------------------------
def test_both_spellings_of_every_flag():
    import argparse
    p = ArgumentParser()
    p.add_argument("--dynamic_frames", action="store_true")
    p.add_argument("--student-only", action="store_true")
    p.add_argument("--cache_latents", action=argparse.BooleanOptionalAction)
    a = p.parse_args(["--dynamic-frames", "--student_only", "--no_cache_latents"])
    assert a.dynamic_frames and a.student_only and a.cache_latents is False and not a.debug
    s = train_mod.parse_args(["--max-steps", "7", "--data-dir", "x", "--no-cache-latents", "--debug"])
    assert s.max_steps == 7 and s.data_dir == str(Path("x").resolve()) and s.cache_latents is False
    assert "debug" not in s.to_dict()  # not a training setting


def test_run_prints_user_errors_and_keeps_bug_tracebacks(capsys, monkeypatch):
    def bad(argv):
        raise UserError("--x 3: must be even; pass 4")

    assert run(bad, []) == 2 and capsys.readouterr().err == "error: --x 3: must be even; pass 4\n"
    with pytest.raises(UserError):
        run(bad, ["--debug"])
    monkeypatch.setenv("TURBO_VAED_DEBUG", "1")
    with pytest.raises(UserError):
        run(bad, [])

    def bug(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        run(bug, [])


# ---- atomic writes and file checks ----------------------------------------------------------------
def test_atomic_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "student") as tmp:
            (tmp / "config.json").write_text('{"new": 1}')
            raise OSError("disk full")
    assert (tmp_path / "student" / "config.json").read_text() == "{}" and not (tmp_path / ".student.tmp").exists()
    with atomic_dir(tmp_path / "student") as tmp:
        (tmp / "config.json").write_text('{"new": 1}')
    assert json.loads((tmp_path / "student" / "config.json").read_text()) == {"new": 1}
    atomic_write(tmp_path / "a.json", "[1]")
    assert (tmp_path / "a.json").read_text() == "[1]" and [p.name for p in tmp_path.iterdir()] != []


def test_atomic_file_writes_through_a_path_and_keeps_the_old_file_on_failure(tmp_path):
    """``atomic_file`` serves writers that take a path (savefig, PyAV, save_file): the old file stays whole when
    the writer fails, no temp file is left, and the new file appears only when the block finishes."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path / "latents.safetensors"
    save_file({"z": torch.zeros(2)}, str(out))
    with pytest.raises(OSError):
        with atomic_file(out) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
            tmp.write_bytes(b"half a file")
            raise OSError("disk full")
    assert torch.equal(load_file(str(out))["z"], torch.zeros(2)) and [p.name for p in tmp_path.iterdir()] == [out.name]
    with atomic_file(out) as tmp:
        save_file({"z": torch.ones(2)}, str(tmp))
        assert torch.equal(load_file(str(out))["z"], torch.zeros(2))  # not yet replaced
    assert torch.equal(load_file(str(out))["z"], torch.ones(2)) and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_plots_and_videos_are_written_atomically(tmp_path):
    """The training plot and the comparison video go through ``atomic_file``: a PNG and an mp4 at the asked path,
    nothing else left in the folder."""
    import numpy as np

    from train_vae.plots import plot_training
    from validation_videos import write_video

    plot_training([{"step": 1, "loss": 1.0, "val_psnr": 20.0}, {"step": 2, "loss": 0.5}], tmp_path / "loss.png", 25.0)
    write_video(tmp_path / "clip.mp4", [np.zeros((3, 16, 16, 3), np.uint8)] * 2, 24.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "loss.png"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "clip.mp4").read_bytes()[4:8] == b"ftyp"


def test_file_problem_names_truncated_files(tmp_path, students):
    import torch
    torch.save({"w": torch.zeros(100)}, tmp_path / "ok.bin")
    data = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    assert file_problem(tmp_path / "ok.bin") is None
    assert "truncated" in file_problem(tmp_path / "cut.bin")
    assert file_problem(students / "taef2" / "diffusion_pytorch_model.safetensors") is None
    assert "unreadable" in file_problem(students / "broken" / "diffusion_pytorch_model.safetensors")
    (tmp_path / "empty.json").write_text("")
    assert "empty" in file_problem(tmp_path / "empty.json")


# ---- training: each bad input stops before the teacher (and, for settings, before indexing) ---------
def _train_argv(clips, out, *extra):
    return ["--config", "taef2", "--data_dir", str(clips), "--output_dir", str(out), "--resolution", "32",
            "--num_frames", "3", "--num_holdout", "1", "--max_steps", "2", "--report_to", "none", "--train_crop", "0",
            "--train_frames", "0", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--resume", "latest"], "nothing to resume"),
    (["--resolution", "60"], "height 60 is not a multiple of 8"),
    (["--train_crop", "20"], "--train_crop 20 must be a multiple of 8"),
    (["--lr_schedule", "linear"], "must be constant or cosine"),
    (["--max_steps", "0"], "--max_steps 0: must be >= 1"),
    (["--data_dir", "no/such/folder"], "no such video folder"),
    (["--config", "dcae"], "has no public teacher"),
    (["--config", "nope"], "config 'nope' not found"),
    (["--selection", "l1"], "use a flash_* config"),
    (["--report_to", "tensorboard"], "--report_to must be 'wandb' or 'none'"),
])
def test_train_bad_settings_stop_before_indexing_and_teacher(extra, message, clips, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "load_teacher", _no_teacher)
    monkeypatch.setattr(train_mod, "VideoIndex", _no_index)
    err = expect_user_error(capsys, train_mod.main, _train_argv(clips, tmp_path / "out", *extra))
    assert message in err


def test_train_unwritable_output_and_data_problems_stop_before_teacher(clips, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "load_teacher", _no_teacher)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = expect_user_error(capsys, train_mod.main, _train_argv(clips, a_file))
    assert "--output_dir" in err and "is a file" in err
    err = expect_user_error(capsys, train_mod.main, _train_argv(clips, a_file / "out"))  # cannot be created
    assert "cannot write there" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = expect_user_error(capsys, train_mod.main, _train_argv(empty, tmp_path / "o1"))
    assert "no usable videos" in err
    err = expect_user_error(capsys, train_mod.main, _train_argv(clips, tmp_path / "o2", "--num_holdout", "3"))
    assert "need more than --num_holdout 3" in err


def test_train_damaged_checkpoint_named_before_teacher(clips, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "load_teacher", _no_teacher)
    step = tmp_path / "out" / "checkpoints" / "step_000002"
    (step / "student").mkdir(parents=True)
    (step / "settings.json").write_text("{}")
    (step / "student" / "config.json").write_text("{}")
    (step / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "out" / "checkpoints" / "latest").write_text("step_000002")
    err = expect_user_error(capsys, train_mod.main, _train_argv(clips, tmp_path / "out", "--resume", str(step)))
    assert "pytorch_model.bin" in err and "damaged" in err and "--resume latest" in err
    err = expect_user_error(capsys, train_mod.main, _train_argv(clips, tmp_path / "out", "--resume", "latest"))
    assert "no intact checkpoint" in err and "pytorch_model.bin" in err


def test_train_sh_user_error_is_one_line(tmp_path):
    """Through train.sh, as a user runs it: exit code 2, one line, no traceback."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "train.sh"), "--output_dir", "fresh", "--resume", "latest",
                           "--report_to", "none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"error: --resume latest: no checkpoint in {(tmp_path / 'fresh').resolve() / 'checkpoints'}, nothing to resume; leave "
        f"out --resume to start a new run, or pass the --output_dir of the run to resume"]


# ---- validation scripts: a student of another config is named before the teacher -----------------------
def _metrics(student, clips, out, *extra):
    return ["--config", "taef2", "--student", str(student), "--data_dir", str(clips), "--num_frames", "9",
            "--resolution", "64", "--output", str(out), "--no_progress", *extra]


def _videos(student, clips, out, *extra):
    return ["--config", "taef2", "--student", str(student), "--data_dir", str(clips), "--num_frames", "9",
            "--output_dir", str(out), *extra]


@pytest.mark.parametrize("script", ["metrics", "videos"])
def test_validation_bad_inputs_stop_before_teacher(script, students, clips, tmp_path, capsys, monkeypatch):
    import models.config
    import validation_videos
    from train_vae import validation_metrics
    monkeypatch.setattr(models.config, "load_teacher", _no_teacher)
    main = validation_metrics.main if script == "metrics" else validation_videos.main
    build = _metrics if script == "metrics" else _videos
    out = tmp_path / ("m.json" if script == "metrics" else "videos")

    def err_for(*argv, student=students / "taef2", data=clips):
        args = build(student, data, out)
        for i in range(0, len(argv), 2):
            args[args.index(argv[i]) + 1] = argv[i + 1]
        return expect_user_error(capsys, main, args)

    assert "wrong --config for this student" in err_for("--config", "ltx")
    assert "damaged" in err_for(student=students / "broken")
    assert "diffusion_pytorch_model.safetensors" in err_for(student=students / "broken")
    assert "no student found" in err_for(student=tmp_path)
    assert "no such video file or folder" in err_for(data=tmp_path / "nowhere")
    assert "takes 1 + 8k frames" in err_for("--config", "ltx", "--student", "teacher", "--num_frames", "16")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no usable videos" in err_for(data=empty)
    if script == "metrics":
        (tmp_path / "a_folder").mkdir()
        assert "is a folder, expected a file name" in err_for("--output", str(tmp_path / "a_folder"))
        assert "height 60 is not a multiple of 8" in err_for("--resolution", "60")
    else:
        (tmp_path / "a_file").write_text("x")
        assert "is a file" in err_for("--output_dir", str(tmp_path / "a_file"))


def test_generate_latents_bad_inputs_stop_before_teacher(clips, tmp_path, capsys, monkeypatch):
    from train_vae import generate_latents as gl
    monkeypatch.setattr(gl, "load_teacher", _no_teacher)
    base = ["--config", "taef2", "--data_dir", str(clips), "--output_dir", str(tmp_path / "lat"), "--quiet"]
    assert "not a multiple of 8" in expect_user_error(capsys, gl.main, base + ["--resolution", "30"])
    assert "no such" in expect_user_error(capsys, gl.main, base[:3] + [str(tmp_path / "x")] + base[4:])
    assert "config 'ltxx' not found" in expect_user_error(capsys, gl.main, ["--config", "ltxx"] + base[2:])
