"""Teacher-derived students (models/derived): exact teacher graphs, channel selection, compensation, operator
replacement, streaming, strict loading, and clear errors for bad settings.

TAEF2 with its real weights (TURBO_VAED_ASSETS); Wan 2.1 and LTX-Video 0.9.0 as small random diffusers VAEs."""
import json

import pytest
import torch
import torch.nn as nn
from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan

from models.config import build_student, load_config, teacher_config_dict
from models.derived import DerivedStudent, derive, student_kwargs, teacher_graph_student
from models.derived.operators import Conv3d, DepthwiseSeparable, FrameConv, init_from_dense, make_conv
from models.derived.pruning import _Moments, fold_compensation
from models.student import CheckpointMismatchError
from models.teachers import DiffusersTeacher, TAEF2Teacher
from train_vae.data import make_procedural_clips
from train_vae.metrics import psnr, to_unit


# ---- teachers ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def taef2():
    return TAEF2Teacher()


@pytest.fixture(scope="module")
def taef2_latents(taef2, tmp_path_factory):
    """TAEF2 latents of procedural clips: (calibration (8, 32, 1, 8, 8), held-out (2, 32, 3, 8, 8))."""
    from train_vae.data import VideoDataset
    d = tmp_path_factory.mktemp("clips")
    make_procedural_clips(d, num_clips=5, num_frames=12, size=(64, 64), seed=11)
    ds = VideoDataset(d, num_frames=3, resolution=64, train=False)
    with torch.no_grad():
        z = torch.cat([taef2.encode(ds[i]["video"][None]) for i in range(len(ds))])
    calib = z[:3].transpose(1, 2).reshape(-1, 32, 1, 8, 8)  # 9 single frames of 3 clips
    return calib, z[3:]


def small_wan():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.7, 1.0, 2.0]).eval()
    return DiffusersTeacher(vae, {"type": "mean_std", "stats": "config"})


def small_ltx():
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 16, 32, 32),
                                decoder_block_out_channels=(8, 16, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 2, 1, 1, 2)).eval()
    for p in vae.parameters():  # diffusers zero-initialises some layers: make every layer matter
        p.data.normal_(0, 0.2)
    return DiffusersTeacher(vae, {"type": "mean_std", "stats": "buffers"})


def ratio_cfg(family, latent_channels, widths, inner, operators):
    return {"name": f"test_{family}", "latent_channels": latent_channels,
            "student": {"type": "derived", "family": family, "widths": widths, "inner": inner, "operators": operators}}


# ---- exactness ---------------------------------------------------------------------------------------------------
def test_taef2_graph_at_full_width_is_the_teacher(taef2):
    model = teacher_graph_student(taef2, "taef2", {}, 32)
    z = torch.randn(1, 32, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(z), taef2.decode(z), atol=1e-5, rtol=0)


def test_wan_graph_at_full_width_is_the_teacher():
    teacher = small_wan()
    model = teacher_graph_student(teacher, "wan", teacher_config_dict(teacher.vae.config), 4)
    z = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        out, ref = model(z).clamp(-1, 1), teacher.decode(z)  # diffusers' Wan decode clamps
    assert out.shape == ref.shape == (1, 3, 9, 32, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_ltx_graph_at_full_width_is_the_teacher():
    teacher = small_ltx()
    model = teacher_graph_student(teacher, "ltx", teacher_config_dict(teacher.vae.config), 8)
    z = torch.randn(1, 8, 2, 2, 3)
    with torch.no_grad():
        out, ref = model(z), teacher.decode(z)
    assert out.shape == ref.shape == (1, 3, 9, 64, 96)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_derivation_at_full_width_and_dense_changes_nothing(taef2, taef2_latents):
    calib, held = taef2_latents
    kwargs = student_kwargs(ratio_cfg("taef2", 32, {}, {}, {}), {})
    student, report = derive(taef2, kwargs, calib)
    assert not report.refit_error and report.summary()["pruned_groups"] == 0
    with torch.no_grad():
        torch.testing.assert_close(student(held), taef2.decode(held), atol=1e-5, rtol=0)


# ---- selection and compensation on TAEF2's real weights -----------------------------------------------------------
PRUNED = ({"up1": 0.5, "up2": 0.25}, {"mid": 0.25, "up0": 0.5, "up1": 0.5, "up2": 0.25})


def step0_psnr(teacher, student, held):
    with torch.no_grad():
        return psnr(to_unit(student(held)), to_unit(teacher.decode(held))).mean().item()


def test_pruned_student_has_the_configured_widths(taef2, taef2_latents):
    kwargs = student_kwargs(ratio_cfg("taef2", 32, *PRUNED, {"mid": "dw5"}), {})
    student, report = derive(taef2, kwargs, taef2_latents[0])
    g = student.decoder
    assert g.stage["up1"].conv.weight.shape == (32, 64, 3, 3) and g.stage["up2"].conv.weight.shape == (16, 32, 3, 3)
    assert g.stage["up0"].blocks[0].conv[0].weight.shape == (32, 64, 3, 3)
    assert g.conv_out.weight.shape == (3, 16, 3, 3)
    mid_conv = g.stage["mid"].blocks[0].conv[0]
    assert isinstance(mid_conv, DepthwiseSeparable) and mid_conv.depthwise.weight.shape == (64, 1, 5, 5)
    assert mid_conv.pointwise.weight.shape == (16, 64, 1, 1)
    assert report.widths["up2"] == (64, 16) and len(student.config.teacher_channels["up2"]) == 16
    assert 0 < report.factorization_error["stage.mid.blocks.0.conv.0"] < 1


def test_selection_is_deterministic(taef2, taef2_latents):
    kwargs = student_kwargs(ratio_cfg("taef2", 32, *PRUNED, {}), {})
    for selection in ("independence", "random"):
        a, ra = derive(taef2, kwargs, taef2_latents[0], selection, "none", seed=3)
        b, rb = derive(taef2, kwargs, taef2_latents[0], selection, "none", seed=3)
        assert ra.keep == rb.keep
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    _, other = derive(taef2, kwargs, taef2_latents[0], "random", "none", seed=4)
    assert other.keep != ra.keep


def test_independence_selection_beats_l1_at_step_0(taef2, taef2_latents):
    calib, held = taef2_latents
    kwargs = student_kwargs(ratio_cfg("taef2", 32, *PRUNED, {}), {})
    for compensation in ("none", "refit"):
        ind = step0_psnr(taef2, derive(taef2, kwargs, calib, "independence", compensation)[0], held)
        l1 = step0_psnr(taef2, derive(taef2, kwargs, calib, "l1", compensation)[0], held)
        assert ind > l1 + 1.0, (compensation, ind, l1)


def test_compensation_beats_slicing_alone(taef2, taef2_latents):
    calib, held = taef2_latents
    kwargs = student_kwargs(ratio_cfg("taef2", 32, *PRUNED, {}), {})
    none = step0_psnr(taef2, derive(taef2, kwargs, calib, "independence", "none")[0], held)
    fold = step0_psnr(taef2, derive(taef2, kwargs, calib, "independence", "fold")[0], held)
    student, report = derive(taef2, kwargs, calib, "independence", "refit")
    refit = step0_psnr(taef2, student, held)
    assert fold > none + 1.0 and refit > none + 1.0, (none, fold, refit)
    before, after = zip(*report.refit_error.values())
    assert all(a <= b + 1e-9 for a, b in zip(after, before))  # least squares never fits worse than the start


def test_fold_lowers_a_pruned_layers_output_error():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(8, 3, generator=gen)
    x = (mix @ torch.randn(3, 4000, generator=gen)).T.reshape(4000, 8, 1, 1)  # 8 channels spanned by 3 factors
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    conv = nn.Conv2d(8, 5, 1)
    ref = conv(x)
    stats = _Moments()
    stats.add(x, gen, max_positions=10 ** 6)
    keep = torch.tensor([0, 3, 5])
    state = {"c.weight": conv.weight.detach().clone(), "c.bias": conv.bias.detach().clone()}
    sliced = nn.functional.conv2d(x[:, keep], state["c.weight"][:, keep], state["c.bias"])
    fold_compensation(state, ["c"], keep, 8, {"c": stats})
    folded = nn.functional.conv2d(x[:, keep], state["c.weight"][:, keep], state["c.bias"])
    err_none, err_fold = (sliced - ref).norm() / ref.norm(), (folded - ref).norm() / ref.norm()
    assert err_fold < 0.05 < err_none


# ---- operators -----------------------------------------------------------------------------------------------------
def test_depthwise_init_is_exact_for_rank_one_kernels():
    p, d = torch.randn(6, 4), torch.randn(4, 27)  # C_out x C_in and C_in x taps
    w = (p.T[:, :, None] * d[:, None, :]).transpose(0, 1).reshape(6, 4, 3, 3, 3)
    dense = Conv3d(4, 6, 3, "replicate")
    dense.weight.data.copy_(w)
    sep = make_conv("dw3", 4, 6, 3, "replicate")
    assert init_from_dense(sep, w, dense.bias.detach()) < 1e-6
    x = torch.randn(1, 4, 5, 6, 6)
    torch.testing.assert_close(sep(x), dense(x), atol=1e-5, rtol=1e-4)
    wide = make_conv("dw5", 4, 6, 3, "replicate")  # a 3-tap filter sits at the centre of 5 taps
    init_from_dense(wide, w, dense.bias.detach())
    torch.testing.assert_close(wide(x), dense(x), atol=1e-5, rtol=1e-4)


def test_frame_init_is_exact_on_static_video():
    dense = Conv3d(4, 6, 3, "replicate")
    frame = make_conv("frame", 4, 6, 3)
    assert isinstance(frame, FrameConv) and init_from_dense(frame, dense.weight.detach(), dense.bias.detach()) is None
    static = torch.randn(1, 4, 1, 6, 6).expand(-1, -1, 5, -1, -1)
    torch.testing.assert_close(frame(static), dense(static), atol=1e-5, rtol=1e-4)


# ---- video teachers: derivation, streaming, loading -----------------------------------------------------------------
def test_wan_student_streams_like_its_one_pass_decode():
    teacher = small_wan()
    cfg = ratio_cfg("wan", 4, {"up2": 0.5, "up3": 0.5}, {"up2": 0.5, "up3": 0.5},
                    {"mid": "dw3", "up0": "dw5", "up2": "frame", "up3": "frame"})
    student, report = derive(teacher, student_kwargs(cfg, teacher_config_dict(teacher.vae.config)),
                             torch.randn(2, 4, 3, 4, 4))
    assert report.refit_error and student.decoder.group_widths["up3"] == 4
    z = torch.randn(1, 4, 5, 4, 4)
    with torch.no_grad():
        one = student(z)
        for chunk in (1, 2):
            parts = list(student.decode_stream(z, chunk))
            assert [p.shape[2] for p in parts][:2] == ([1, 4] if chunk == 1 else [5, 8])
            torch.testing.assert_close(torch.cat(parts, dim=2), one, atol=1e-4, rtol=0)
    assert one.shape == (1, 3, 17, 32, 32)


def test_ltx_student_derives_and_round_trips_strictly(tmp_path):
    teacher = small_ltx()
    cfg = ratio_cfg("ltx", 8, {k: 0.5 for k in ("mid", "up1", "up2.in", "up2", "up3.in", "up3")},
                    {s: 0.5 for s in ("mid", "up0", "up1", "up2", "up3")}, {s: "dw3" for s in ("mid", "up0", "up1")})
    student, report = derive(teacher, student_kwargs(cfg, teacher_config_dict(teacher.vae.config)),
                             torch.randn(2, 8, 2, 2, 2))
    assert student.decoder.up_blocks[1].upsamplers[0].conv.weight.shape == (16 * 8, 16, 3, 3, 3)
    assert student.latent_mean.shape == (8,) and len(student.config.teacher_channels["up3"]) == 4
    z = torch.randn(1, 8, 2, 2, 2)
    with torch.no_grad():
        video = student(z)
    assert video.shape == (1, 3, 9, 64, 64) and student.num_output_frames(2) == 9
    student.save_pretrained(tmp_path / "s")
    loaded = DerivedStudent.from_pretrained(tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), video)
    wider = DerivedStudent(**{**student.config, "widths": {**student.config.widths, "up3": 8}})
    wider.save_pretrained(tmp_path / "wider")
    (tmp_path / "wider" / "config.json").write_text((tmp_path / "s" / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError):
        DerivedStudent.from_pretrained(tmp_path / "wider")


def test_flash_configs_build_with_their_layouts():
    with torch.device("meta"):
        wan, ltx, taef2 = (build_student(load_config(n)) for n in ("flash_wan", "flash_ltx", "flash_taef2"))
    assert wan.decoder.group_widths["up2"] == 24 and wan.decoder.group_widths["up3"] == 12
    assert isinstance(wan.decoder.up_blocks[2].resnets[0].conv1, FrameConv)
    assert taef2.decoder.group_widths["up2"] == 32 and taef2.decoder.group_widths["mid.0.c1"] == 8
    assert isinstance(wan.decoder.mid_block.resnets[0].conv1, DepthwiseSeparable)
    assert ltx.decoder.group_widths["mid"] == 128 and ltx.decoder.group_widths["up3"] == 32
    n = sum(p.numel() for p in taef2.parameters())
    assert n <= 0.35 * 1_340_227  # TAEF2's decoder parameters


# ---- bad settings -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("student, message", [
    ({"widths": {"up2": 0.001}}, "leaves no channel"),
    ({"inner": {"up5": 0.5}}, "has no up5"),
    ({"operators": {"mid": "dw7"}}, "unknown operator"),
    ({"operators": {"mid": "frame"}}, "unknown operator"),  # TAEF2's convs are already 2D
    ({"family": "hunyuan"}, "student.family must be one of"),
])
def test_bad_settings_fail_with_a_clear_message(student, message):
    cfg = {"name": "bad", "latent_channels": 32, "student": {"type": "derived", "family": "taef2", **student}}
    with pytest.raises(ValueError, match=message):
        student_kwargs(cfg, {})


def test_bad_derivation_settings_fail_before_any_work(taef2):
    kwargs = student_kwargs(ratio_cfg("taef2", 32, *PRUNED, {}), {})
    with pytest.raises(ValueError, match="unknown channel selection"):
        derive(taef2, kwargs, torch.randn(1, 32, 1, 8, 8), selection="magnitude")
    with pytest.raises(ValueError, match="unknown compensation"):
        derive(taef2, kwargs, torch.randn(1, 32, 1, 8, 8), compensation="magic")


def test_training_refuses_a_bad_derived_config_before_any_work(tmp_path):
    import yaml

    from train_vae import train as train_mod
    cfg = load_config("flash_taef2")
    cfg["student"]["widths"]["up2"] = 0.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "path"}))
    with pytest.raises(ValueError, match="student.widths.up2: width ratio 0.0"):
        train_mod.parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="unknown channel selection"):
        train_mod.parse_args(["--config", "flash_taef2", "--selection", "largest"])
    with pytest.raises(ValueError, match="teacher-derived student"):
        train_mod.parse_args(["--config", "taef2", "--selection", "l1"])


# ---- three-phase training ------------------------------------------------------------------------------------------
def flash_args(clips, out, **kw):
    """train.py's command line for a tiny flash_taef2 run: 20 steps cover all three phases (align: steps 0-1,
    output: 2-18, perceptual with LPIPS and the GAN: 19)."""
    args = ["--config", "flash_taef2", "--data_dir", str(clips), "--output_dir", str(out), "--resolution", "32",
            "--num_frames", "3", "--num_holdout", "1", "--max_steps", "20", "--checkpoint_every", "10",
            "--log_every", "1", "--val_every", "10", "--report_to", "none", "--clips_per_video", "2",
            "--train_crop", "16", "--train_frames", "2", "--calibration_samples", "4", "--warmup_steps", "0", "--batch_size", "2"]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    return args


def test_three_phase_run_resumes_exactly(clips, tmp_path, monkeypatch):
    from train_vae import train as train_mod
    result = train_mod.Trainer(train_mod.parse_args(flash_args(clips, tmp_path / "a"))).fit()
    rows = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    phases = [r.get("phase") for r in rows[1:]]
    assert phases == ["align"] * 2 + ["output"] * 17 + ["perceptual"]
    assert "distill_up2" in rows[1] and "teacher_l1" in rows[4] and "distill_mid" not in rows[4]
    assert "lpips" in rows[20] and "g_adv" in rows[20] and "d_loss" in rows[20]
    derivation = json.loads((tmp_path / "a" / "derived" / "derivation.json").read_text())
    assert derivation["selection"] == "independence" and derivation["calibration_latents"][0] == 4
    assert result["derivation"]["pruned_groups"] > 0 and len(result["per_clip"]) == 1
    student = DerivedStudent.from_pretrained(tmp_path / "a" / "student")
    assert student.decoder.group_widths["up2"] == 32

    real_step = train_mod.Trainer.train_step

    def interrupted(self, it):
        if self.progress.step == 14:
            raise KeyboardInterrupt
        return real_step(self, it)

    monkeypatch.setattr(train_mod.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mod.Trainer(train_mod.parse_args(flash_args(clips, tmp_path / "b"))).fit()
    monkeypatch.setattr(train_mod.Trainer, "train_step", real_step)
    train_mod.Trainer(train_mod.parse_args(flash_args(clips, tmp_path / "b", resume="latest"))).fit()
    a = DerivedStudent.from_pretrained(tmp_path / "a" / "student").state_dict()
    b = DerivedStudent.from_pretrained(tmp_path / "b" / "student").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_flash_configs_have_exact_parameter_counts():
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in build_student(load_config(n)).parameters())
                  for n in ("flash_taef2", "flash_wan", "flash_ltx")}
    assert counts == {"flash_taef2": 462_931, "flash_wan": 5_851_391, "flash_ltx": 5_614_768}
