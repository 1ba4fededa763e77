"""scripts/reconstruction_table.py on each dataset layout (video folder, UCF-101 test list, DAVIS-2017 JPEG frames),
tiny data, the real TAEF2 teacher and a random student of its config."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from models.config import build_student, load_config
from test_export import script
from train_vae import validation_metrics as vm
from train_vae.data import VideoInfo, make_procedural_clips, read_video_frames


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("student")
    build_student(load_config("taef2")).save_pretrained(folder)
    return folder


def make_layout(layout: str, root):
    """Two clip sources of 12 frames at 64x64 in ``layout``; returns the --data path."""
    videos = make_procedural_clips(root / "src", num_clips=2, num_frames=12, size=(64, 64))
    if layout == "videos":
        return root / "src"
    if layout == "ucf101":
        listed = ["Skiing/v_Skiing_g01_c01.avi", "Archery/v_Archery_g02_c03.avi"]  # list order, not sorted
        for rel, src in zip(listed, videos):
            (root / "UCF-101" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / "UCF-101" / rel)  # an mp4 stream under .avi: probed by content
        (root / "ucfTrainTestlist").mkdir()
        (root / "ucfTrainTestlist" / "testlist01.txt").write_text("\n".join(listed) + "\n")
        return root / "ucfTrainTestlist" / "testlist01.txt"
    for i, src in enumerate(videos):  # davis: the decoded frames as JPEG files
        seq = root / "DAVIS" / "JPEGImages" / "480p" / f"seq{i}"
        seq.mkdir(parents=True)
        for j, frame in enumerate(read_video_frames(src, list(range(12)), backend="pyav").numpy()):
            Image.fromarray(frame).save(seq / f"{j:05d}.jpg", quality=95)
    return root / "DAVIS"


@pytest.mark.parametrize("layout", vm.DATA_LAYOUTS)
def test_reconstruction_table_on_each_layout(layout, student_dir, tmp_path):
    data = make_layout(layout, tmp_path)
    assert vm.data_layout(data) == layout
    clips = vm.list_dataset_clips(data, 9)
    assert [c.path for c in clips] == {"videos": ["procedural_000.mp4", "procedural_001.mp4"],
                                       "ucf101": ["Skiing/v_Skiing_g01_c01.avi", "Archery/v_Archery_g02_c03.avi"],
                                       "davis": ["seq0", "seq1"]}[layout]
    # every layout gives the same record: the video's VideoInfo, and the window in it
    assert all(isinstance(c.video, VideoInfo) and c.start + c.num_frames <= c.video.frames for c in clips)
    assert (clips[0].video.reader == "jpeg") == (layout == "davis")
    frames = vm.read_clip_frames(clips[0])
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == torch.uint8
    if layout == "davis":  # the JPEG frames as written (lossy, close to the video's)
        src = read_video_frames(tmp_path / "src" / "procedural_000.mp4", list(range(clips[0].start, clips[0].start + 9)),
                                backend="pyav")
        assert (frames.float() - src.float()).abs().mean() < 8
    out = tmp_path / "table"
    frames_per_clip = 9 if layout == "videos" else 5  # rFVD (I3D) once; the others stay cheap
    result = script("reconstruction_table").main(
        ["--pair", f"taef2={student_dir}", "--pair", "taef2=teacher", "--data", str(data), "--output", str(out),
         "--num_frames", str(frames_per_clip), "--resolution", "32"])
    (trained, itself) = result["results"]
    assert result["settings"]["layout"] == layout and result["settings"]["n_clips"] == 2
    assert trained["teacher_params"] == itself["teacher_params"] == itself["student_params"]
    assert trained["student_params"] == sum(p.numel() for p in build_student(load_config("taef2")).parameters())
    assert itself["student"] == itself["teacher"] and itself["retention"]["psnr"] == 1.0
    assert trained["student"]["psnr"] < trained["teacher"]["psnr"]  # a random student is worse than the teacher
    assert (trained["teacher"]["rfvd"] is not None) == (layout == "videos")
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["decoder"] for r in rows] == ["teacher (TAEF2)", "student"] * 2
    assert float(rows[1]["psnr"]) == pytest.approx(trained["student"]["psnr"])
    md = out.with_suffix(".md").read_text()
    assert "| taef2 | student |" in md and "PSNR retention" in md
    assert json.loads(out.with_suffix(".json").read_text())["results"][0]["student_path"] == str(student_dir)
    assert np.isfinite(trained["student"]["lpips"])


def test_ucf_list_names_the_missing_video(tmp_path):
    (tmp_path / "testlist01.txt").write_text("Skiing/v_Skiing_g01_c01.avi\n")
    with pytest.raises(ValueError, match="pass --video_root"):
        vm.list_dataset_clips(tmp_path / "testlist01.txt", 5)
