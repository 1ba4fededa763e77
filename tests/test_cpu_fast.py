"""models/cpu_fast.py: the CPU transform keeps every model's state dict and outputs (<= 1e-5 relative) and its
gradients, for every student config and for a teacher; the oneDNN conv, the fused norms and the workspace each
equal the plain ops they replace."""
import copy

import pytest
import torch
import torch.nn as nn
from conftest import narrow_student
from test_teachers import TINY

from models.blocks import ChannelLayerNorm
from models.config import build_student, config_names, load_config, load_teacher
from models.cpu_fast import FastConvNd, cpu_fast, is_cpu_fast, onednn_conv, _PACKED, _WORKSPACE, Workspace
from models.student import TurboVAED


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max())


@pytest.mark.parametrize("name", config_names())
def test_transform_keeps_state_dict_outputs_and_gradients_of_every_student(name):
    torch.manual_seed(0)
    plain = narrow_student(name, layers_per_block=[1] * 5)
    fast = cpu_fast(copy.deepcopy(plain))
    assert is_cpu_fast(fast) and not is_cpu_fast(plain) and type(fast) is type(plain)
    want, got = plain.state_dict(), fast.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    z = torch.randn(plain.latent_shape_for(plain.num_output_frames(3), *plain.compression[1:]))
    with torch.no_grad():
        ref, out, streamed = plain(z), fast(z), fast.decode(z, chunk=1)
    assert close(out, ref) and close(streamed, ref) and out.is_contiguous()
    loss_plain, loss_fast = (plain(z) ** 2).mean(), (fast(z) ** 2).mean()
    g_plain = torch.autograd.grad(loss_plain, list(plain.parameters()))
    g_fast = torch.autograd.grad(loss_fast, list(fast.parameters()))
    assert all(close(a, b, 1e-4) for a, b in zip(g_fast, g_plain))  # float sums in another order, through every layer


def test_transform_keeps_a_teachers_outputs():
    """A diffusers decoder (CogVideoX: its convs are diffusers' own ``nn.Conv3d`` subclass) through the transform."""
    torch.manual_seed(0)
    plain = load_teacher(load_config("cogvideox"), random_init=True, init_config=TINY["cogvideox"]).eval()
    fast = cpu_fast(copy.deepcopy(plain))
    convs = [m for m in fast.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert convs and all(isinstance(m, FastConvNd) for m in convs)
    assert list(fast.state_dict()) == list(plain.state_dict())
    z = torch.randn(1, plain.latent_channels, 3, 4, 4)
    with torch.no_grad():
        assert close(fast.decode(z), plain.decode(z))


def test_transformed_student_saves_the_plain_checkpoint(tmp_path):
    torch.manual_seed(0)
    fast = cpu_fast(narrow_student("hunyuan", layers_per_block=[1] * 5))
    cpu_fast(fast)  # a second application changes nothing more
    fast.save_pretrained(tmp_path / "s")
    plain = TurboVAED.from_pretrained(tmp_path / "s").eval()
    assert not is_cpu_fast(plain)
    z = torch.randn(1, 16, 2, 2, 2)
    with torch.no_grad():
        assert close(fast(z), plain(z))


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv3d(12, 12, 3, padding=(0, 1, 1)), (1, 12, 7, 16, 16)),                       # dense, PyTorch's native path
    (nn.Conv3d(12, 3, 3, padding=1), (2, 12, 5, 9, 11)),                                  # batch 2, zero time padding
    (nn.Conv3d(16, 16, 5, padding=(0, 2, 2), groups=16), (1, 16, 9, 8, 8)),               # depthwise 5x5x5
    (nn.Conv3d(8, 8, (5, 3, 3), padding=(2, 1, 1), groups=8, bias=False), (2, 8, 6, 5, 7)),
    (nn.Conv2d(6, 10, 3, padding=1), (3, 6, 12, 12)),
    (nn.Conv3d(4, 8, 1), (1, 4, 3, 5, 5)),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_onednn_conv_matches_pytorch_forward_and_backward(layer, shape, channels_last):
    """``onednn_conv`` (oneDNN forward and the oneDNN-only backward of ``_OneDnnConv``) == the layer itself."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    if channels_last and x.ndim == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    out, ref = onednn_conv(layer, x), layer(x)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *layer.parameters()], grad)
    want = torch.autograd.grad(ref, [x, *layer.parameters()], grad)
    for a, b in zip((out, *got), (ref, *want)):
        assert close(a, b)


def test_packed_weight_serves_every_frame_count_and_is_never_held_twice(monkeypatch):
    """A no-grad oneDNN conv packs its weight once for pieces of any length (a stream's vary) or batch, and again
    only for another frame size or an updated weight, the stale packing dropped before the new one is made."""
    packs = []
    real = torch._C._nn.mkldnn_reorder_conv3d_weight

    def reorder(w, *args):
        packs.append((tuple(args[-1]), _PACKED.get(layer)))  # the input size, and what is still cached then
        return real(w, *args)

    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv3d_weight", reorder)
    layer = nn.Conv3d(8, 16, 3, padding=(0, 1, 1))
    with torch.no_grad():
        for shape in [(1, 8, 5, 6, 6), (1, 8, 3, 6, 6), (2, 8, 12, 6, 6), (1, 8, 5, 4, 4), (1, 8, 5, 4, 4)]:
            x = torch.randn(shape)
            assert close(onednn_conv(layer, x), layer(x))
        layer.weight.mul_(2)
        assert close(onednn_conv(layer, x), layer(x))
    assert [size for size, _ in packs] == [(1, 8, 5, 6, 6), (1, 8, 5, 4, 4), (1, 8, 5, 4, 4)]
    assert all(stale is None for _, stale in packs)


@pytest.mark.parametrize("name", ["hunyuan", "ltx", "taef2"])
def test_cpu_decode_workspace_is_exact_and_leaves_inputs_alone(name):
    """A no-grad decode of the transformed student (buffers reused, residuals summed inside the convs,
    ``cpu_fast.Workspace``) gives the autograd path's video, keeps the caller's latents and earlier results intact, and
    its residual blocks really write their output into their input's memory."""
    torch.manual_seed(0)
    cfg = load_config(name)
    student = cpu_fast(build_student(cfg).eval())
    z = torch.randn(1, cfg["latent_channels"], 3, 4, 4)
    z_copy = z.clone()
    with torch.no_grad():
        first = student(z)
        kept = first.clone()
        second = student(z)
    reference = student(z.clone().requires_grad_(True)).detach()  # the autograd path: no workspace
    assert _WORKSPACE.get() is None  # closed after the decode
    assert torch.equal(z, z_copy) and torch.equal(first, kept) and torch.equal(first, second)
    assert close(first, reference)

    block = student.mid.resnets[0]
    x = torch.randn(1, block.out_channels, 3, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        outside = block(x.clone())
        token = _WORKSPACE.set(Workspace())
        try:
            inside = block(x)
        finally:
            _WORKSPACE.reset(token)
    assert inside.data_ptr() == x.data_ptr() and torch.equal(inside, outside)


def test_channel_layer_norm_fused_cpu_path_matches_plain_ops():
    """On channels-last CPU input the transformed ``ChannelLayerNorm`` runs one fused layer_norm; values and
    gradients equal those of the plain ops (taken on the same data in the default layout)."""
    torch.manual_seed(0)
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    fast_norm = cpu_fast(nn.Sequential(copy.deepcopy(norm)))[0]
    x = (3 * torch.randn(2, 6, 3, 4, 5) + 1).requires_grad_(True)
    fast_in = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    fast, plain = fast_norm(fast_in), norm(x)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d) and plain.is_contiguous()
    grad = torch.randn_like(plain)
    got = torch.autograd.grad(fast, [fast_in, fast_norm.weight, fast_norm.bias], grad)
    want = torch.autograd.grad(plain, [x, norm.weight, norm.bias], grad)
    for a, b in zip((fast, *got), (plain, *want)):
        assert close(a, b)
