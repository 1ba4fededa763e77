"""Student decoder: paper parameter table, pixel-shuffle formulas, geometry, rank <= 5, loading."""
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.blocks import (Conv3d, DecoupledPixelShuffle3d, PixelShuffle3d, Upsampler3d, pad_time, rms_silu,
                           classic_to_decoupled_permutation)
from models.config import build_student, config_names, is_derived, load_config, teacher_decoder_params
from models.student import CheckpointMismatchError, TurboVAED


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta_student(name):
    with torch.device("meta"):
        return build_student(load_config(name))


# Paper Table 3 (millions). Student counts within 1%, teacher counts to the printed 0.1M.
PAPER = {"ltx": (238.8, 41.9), "hunyuan": (146.1, 40.7), "cogvideox": (123.4, 40.7), "dcae": (239.0, 45.8)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameter_counts_match_paper(name):
    teacher_m, student_m = PAPER[name]
    assert n_params(meta_student(name)) / 1e6 == pytest.approx(student_m, rel=0.01)
    assert round(teacher_decoder_params(load_config(name)) / 1e6, 1) == teacher_m


def test_exact_parameter_counts():
    # Exact counts pin the architecture: any change to a block shows up here.
    assert n_params(meta_student("ltx")) == 41_896_023
    assert n_params(meta_student("hunyuan")) == 40_687_811
    assert n_params(meta_student("dcae")) == 45_831_383
    assert n_params(meta_student("taef2")) == 446_719
    assert round(teacher_decoder_params(load_config("wan")) / 1e6, 1) == 73.3


def test_own_students_are_in_budget():
    wan = n_params(meta_student("wan")) / teacher_decoder_params(load_config("wan"))
    taef2 = n_params(meta_student("taef2")) / teacher_decoder_params(load_config("taef2"))
    assert 0.15 < wan < 0.35
    assert 0.25 <= taef2 <= 0.35


def test_largest_layer_is_up1_expansion():
    student = meta_student("ltx")
    conv = student.up_blocks[1].upsampler.conv.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (256, 2048, (3, 3, 3))
    assert n_params(conv) / 1e6 == pytest.approx(14.2, abs=0.05)
    assert max(p.numel() for p in student.parameters()) == conv.weight.numel()


def test_depthwise_in_low_resolution_blocks_only():
    student = meta_student("hunyuan")
    dw = [m for m in student.modules() if isinstance(m, torch.nn.Conv3d) and m.groups > 1]
    assert dw and all(m.kernel_size == (5, 5, 5) and m.groups == m.in_channels for m in dw)
    for name, module in [("mid", student.mid), ("up0", student.up_blocks[0])]:
        assert any(isinstance(m, torch.nn.Conv3d) and m.groups > 1 for m in module.modules()), name
    for block in student.up_blocks[1:]:
        assert not any(isinstance(m, torch.nn.Conv3d) and m.groups > 1 for m in block.modules())


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 1, 1), (3, 2, 3)])
def test_decoupled_shuffle_matches_eq3_elementwise(factors):
    r_t, r_h, r_w = factors
    c, t, h, w = 2, 3, 2, 3
    x = torch.randn(2, c * r_t * r_h * r_w, t, h, w)
    out = DecoupledPixelShuffle3d(factors)(x)
    assert out.shape == (2, c, r_t * t, r_h * h, r_w * w)
    ref = torch.empty_like(out)
    for ci in range(c):
        for a in range(r_t):
            for i in range(r_h):
                for k in range(r_w):
                    ch = ((ci * r_h + i) * r_w + k) * r_t + a
                    for tt in range(t):
                        ref[:, ci, r_t * tt + a, i::r_h, k::r_w] = x[:, ch, tt]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (3, 2, 3)])
def test_decoupled_equals_classic_after_channel_permutation(factors):
    c = 3
    x = torch.randn(2, c * factors[0] * factors[1] * factors[2], 3, 4, 5)
    perm = classic_to_decoupled_permutation(c, factors)
    assert torch.equal(DecoupledPixelShuffle3d(factors)(x[:, perm]), PixelShuffle3d(factors)(x))
    if factors[0] > 1:  # with r_t = 1 the two orders coincide (the permutation is the identity)
        assert not torch.equal(DecoupledPixelShuffle3d(factors)(x), PixelShuffle3d(factors)(x))
    else:
        assert torch.equal(perm, torch.arange(len(perm)))


class MaxRank(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_rank, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor) and o.ndim > self.max_rank:
                self.max_rank, self.op = o.ndim, str(func)
        return out


def tiny(name, **kw):
    """A narrow Turbo-VAED student of config ``name``; a teacher-derived config's own student (already small)."""
    if is_derived(load_config(name)):
        return build_student(load_config(name), **kw)
    return build_student(load_config(name), block_out_channels=[16, 16, 16, 16, 16], layers_per_block=[1] * 5, **kw)


@pytest.mark.parametrize("name", config_names())
def test_every_intermediate_tensor_has_rank_at_most_5(name):
    student = tiny(name).eval()
    z = torch.randn(student.latent_shape_for(student.num_output_frames(3), *student.compression[1:]))
    with torch.no_grad(), MaxRank() as mode:
        student(z)
    assert mode.max_rank <= 5, mode.op
    if is_derived(load_config(name)):
        return
    classic = tiny(name, pixel_shuffle="classic").eval()
    with torch.no_grad(), MaxRank() as mode:
        classic(z)
    assert mode.max_rank == 8  # the classic shuffle is what Core ML rejects


@pytest.mark.parametrize("name", config_names())
def test_output_shape_and_geometry(name):
    student = tiny(name)
    ct, ch, cw = student.compression
    assert [ct, ch, cw] == load_config(name)["compression"]
    frames = load_config(name)["num_frames"]
    z = torch.randn(student.latent_shape_for(frames, 2 * ch, 3 * cw, batch=2))
    with torch.no_grad():
        out = student(z)
    assert out.shape == (2, 3, frames, 2 * ch, 3 * cw) == student.output_shape(z.shape)


def test_features_are_block_outputs():
    student = tiny("hunyuan").eval()
    z = torch.randn(1, 16, 5, 2, 2)
    with torch.no_grad():
        video, feats = student(z, return_features=("mid", "up1"))
        assert torch.equal(video, student(z))
    assert set(feats) == {"mid", "up1"}
    assert feats["mid"].shape == (1, 16, 5, 2, 2) and feats["up1"].shape == (1, 16, 9, 4, 4)
    with pytest.raises(ValueError, match="unknown feature blocks"):
        student(z, return_features=("up9",))


def test_bad_latents_raise_clear_errors():
    student = tiny("hunyuan")
    with pytest.raises(ValueError, match="expected 16 latent channels, got 8"):
        student(torch.randn(1, 8, 5, 2, 2))
    with pytest.raises(ValueError, match="rank 5"):
        student(torch.randn(16, 5, 2, 2))
    with pytest.raises(ValueError, match="cannot produce 16 frames"):
        student.latent_shape_for(16, 64, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        student.latent_shape_for(17, 60, 64)
    assert student.latent_shape_for(17, 64, 48) == (1, 16, 5, 8, 6)
    with pytest.raises(ValueError, match="upsample_factors"):
        TurboVAED(upsample_factors=((1, 1, 1),))
    with pytest.raises(ValueError, match="pixel_shuffle"):
        TurboVAED(pixel_shuffle="bilinear")


def test_causal_conv_ignores_future_frames():
    conv = Conv3d(2, 2, 3, causal=True)
    x = torch.randn(1, 2, 6, 4, 4)
    y = x.clone()
    y[:, :, 4:] = torch.randn(1, 2, 2, 4, 4)
    assert torch.equal(conv(x)[:, :, :4], conv(y)[:, :, :4])
    noncausal = Conv3d(2, 2, 3, causal=False)
    assert not torch.allclose(noncausal(x)[:, :, 3], noncausal(y)[:, :, 3])


def test_upsampler_frame_trimming():
    x = torch.randn(1, 4, 3, 2, 2)
    assert Upsampler3d(4, (2, 2, 2), trim_first_frames=True)(x).shape == (1, 4, 5, 4, 4)
    assert Upsampler3d(4, (2, 2, 2), trim_first_frames=False)(x).shape == (1, 4, 6, 4, 4)


def test_interpolation_upsampler_is_nearest_upsampling_then_a_conv():
    """Table 1's third upsampler: nearest 3D upsampling, then a C -> C 3x3x3 conv (no channel expansion)."""
    up = Upsampler3d(4, (2, 2, 2), trim_first_frames=True, shuffle="interpolate")
    assert up.conv.conv.weight.shape[:2] == (4, 4)
    x = torch.randn(1, 4, 3, 2, 2)
    big = x.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    with torch.no_grad():
        assert torch.allclose(up(x), up.conv(big)[:, :, 1:], atol=1e-6) and up(x).shape == (1, 4, 5, 4, 4)


def test_save_and_load_round_trip_exactly(tmp_path):
    student = tiny("ltx").eval()
    student.save_pretrained(tmp_path / "s")
    assert (tmp_path / "s" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = TurboVAED.from_pretrained(tmp_path / "s").eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(student.config)
    for (k, a), (k2, b) in zip(student.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    z = torch.randn(1, 128, 2, 1, 1)
    with torch.no_grad():
        assert torch.equal(student(z), loaded(z))


def test_mismatched_checkpoint_raises(tmp_path):
    tiny("ltx").save_pretrained(tmp_path / "s")
    cfg_file = tmp_path / "s" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["layers_per_block"] = [2, 1, 1, 1, 1]  # one more mid resblock than the weights hold
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="mid.resnets.1"):
        TurboVAED.from_pretrained(tmp_path / "s")
    cfg["layers_per_block"] = [1] * 5
    cfg["output_nrom"] = False  # a misspelt setting would otherwise be dropped with a warning
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="output_nrom"):
        TurboVAED.from_pretrained(tmp_path / "s")
    del cfg["output_nrom"]
    cfg["block_out_channels"] = [16, 16, 16, 16, 32]  # same keys, wrong shapes
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError):
        TurboVAED.from_pretrained(tmp_path / "s")


def test_output_norm_switch_keeps_weights_and_pixel_magnitude():
    with_norm, without = tiny("taef2", output_norm=True).eval(), tiny("taef2", output_norm=False).eval()
    assert n_params(with_norm) == n_params(without)
    without.load_state_dict(with_norm.state_dict(), strict=True)  # RMSNorm has no weights: same checkpoint keys
    assert without.norm_out is None and TurboVAED.from_config(without.config).norm_out is None

    def head(model, x):  # what the student does after its last block
        return model.conv_out(rms_silu(model.norm_out, x, model.conv_out.time_pad), padded=True)

    x = torch.randn(1, 16, 3, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    x0 = x.clone()
    with torch.no_grad():
        # affine-free RMSNorm throws away each pixel's feature magnitude; without it the output conv sees it
        torch.testing.assert_close(head(with_norm, 3 * x), head(with_norm, x), rtol=1e-4, atol=1e-5)
        assert (head(without, 3 * x) - head(without, x)).abs().max() > 0.1
        ref = without.conv_out.conv(pad_time(torch.nn.functional.silu(x), *without.conv_out.time_pad))
        torch.testing.assert_close(head(without, x), ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(x, x0)  # the block output is not overwritten in place
    z = torch.randn(1, 32, 3, 2, 2)
    assert without(z).shape == with_norm(z).shape == (1, 3, 3, 16, 16)


def test_summary_counts_every_config_at_a_size_its_student_produces():
    """scripts/summary.py: one row per config, MACs of a decode the student can make (20 frames for a t*4 student
    asked for 17), the exact parameter counts, and students cheaper than their teachers."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / "summary.py"
    spec = importlib.util.spec_from_file_location("_test_summary", path)
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    rows = {r["config"]: r for r in summary.summarize(config_names())}
    assert set(rows) == set(config_names())
    for name, r in rows.items():
        student = meta_student(name)
        assert r["decode"][0] in (17, 20) and r["decode"][0] == student.num_output_frames(
            student.latent_shape_for(*r["decode"])[2])
        assert r["student_decoder_params"] == n_params(student)
        if r["mac_ratio"] is not None:
            assert r["mac_ratio"] > 1 and r["ratio"] < 1, name
    assert rows["flash_taef2"]["student_decoder_params"] == 462_931 and rows["flash_taef2"]["ratio"] <= 0.35
