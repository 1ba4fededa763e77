"""Core ML and ONNX export of small students: rank <= 5, parity with PyTorch, clear errors on bad requests."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from models.config import build_student, load_config

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script(name):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"_test_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small(name):
    # LTX ends in two 2D x2 upsamplers that divide channels by 4: keep 64 there so conv_out sees 4 channels.
    last = 64 if load_config(name)["student"]["num_upsamplers_2d"] else 16
    return build_student(load_config(name), block_out_channels=[16, 16, 16, 16, last], layers_per_block=[1] * 5).eval()


@pytest.fixture(scope="module")
def small_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    torch.manual_seed(0)
    for name in ("ltx", "hunyuan"):
        small(name).save_pretrained(root / name)
    return root


def onnx_max_rank(path):
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    return max(len(v.type.tensor_type.shape.dim) for v in values)


@pytest.mark.parametrize("name, request_args", [
    ("ltx", ["--resolution", "32x64", "--frames", "9"]),
    ("hunyuan", ["--resolution", "32x32", "--frames", "9", "--dynamic-frames"]),  # checks 9 and 13 frames
])
def test_onnx_export_matches_pytorch_and_keeps_rank_5(name, request_args, small_dirs, tmp_path, capsys):
    out = tmp_path / f"{name}.onnx"
    rc = script("export_onnx").main(["--config", name, "--student", str(small_dirs / name), "--output", str(out),
                                     *request_args])  # exit 1 if ONNX Runtime differs from PyTorch by > 1e-3
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "onnx.checker: ok" in text
    assert text.count("max abs error ONNX Runtime vs PyTorch") == (2 if "--dynamic-frames" in request_args else 1)
    assert onnx_max_rank(out) <= 5


def test_coreml_conversion_rank_5_and_classic_differs(small_dirs, tmp_path):
    pytest.importorskip("coremltools")
    export_coreml, common = script("export_coreml"), script("_common")
    student = common.load_student(load_config("hunyuan"), str(small_dirs / "hunyuan"))
    z = torch.randn(student.latent_shape_for(9, 32, 32))
    info = {}
    for label, model in (("decoupled", student), ("classic", common.classic_twin(student))):
        path = tmp_path / f"{label}.mlpackage"
        export_coreml.convert(model, z, "fp16", "iOS17").save(str(path))
        info[label] = export_coreml.describe(path)
    d, c = info["decoupled"], info["classic"]
    assert d["inputs"]["latents"]["shape"] == list(z.shape)
    assert d["outputs"]["video"]["shape"] == [1, 3, 9, 32, 32]
    assert d["max_rank"] <= 5
    assert d["ops"].get("pixel_shuffle", 0) > c["ops"].get("pixel_shuffle", 0)  # decoupled: 2D shuffles per frame
    assert c["op_count"] > d["op_count"]  # classic: rank-8 permutes split into extra reshapes/transposes


def test_coreml_cli_with_enumerated_shapes(small_dirs, tmp_path, capsys):
    pytest.importorskip("coremltools")
    rc = script("export_coreml").main(["--config", "hunyuan", "--student", str(small_dirs / "hunyuan"),
                                       "--resolution", "32x32", "--frames", "9", "--output", str(tmp_path / "e.mlpackage"),
                                       "--enumerated-shapes", "32x32,48x64", "--benchmark"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "enumerated [[1, 16, 3, 4, 4], [1, 16, 3, 6, 8]]" in text
    assert "largest rank 5" in text or "largest rank 4" in text


def test_classic_twin_computes_the_same_function(small_dirs):
    common = script("_common")
    student = common.load_student(load_config("ltx"), str(small_dirs / "ltx"))
    classic = common.classic_twin(student)
    assert classic.config.pixel_shuffle == "classic"
    z = torch.randn(student.latent_shape_for(17, 64, 64))
    with torch.inference_mode():
        torch.testing.assert_close(classic(z), student(z), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["export_onnx", "export_coreml"])
@pytest.mark.parametrize("request_args, message", [
    (["--resolution", "60x64", "--frames", "17"], "multiples of 32"),
    (["--resolution", "64x64", "--frames", "16"], "cannot produce 16 frames"),
    (["--resolution", "64by64", "--frames", "17"], "resolution must be"),
])
def test_impossible_requests_fail_clearly(name, request_args, message, small_dirs, tmp_path, capsys):
    rc = script(name).main(["--config", "ltx", "--student", str(small_dirs / "ltx"), "--output",
                            str(tmp_path / "x"), *request_args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "error:" in err
    assert not (tmp_path / "x").exists()


def test_size_hint_names_valid_sizes_and_crop(small_dirs, tmp_path, capsys):
    rc = script("export_onnx").main(["--config", "ltx", "--student", str(small_dirs / "ltx"), "--resolution",
                                     "720x1280", "--frames", "17", "--output", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "height 704 or 736" in err and "--crop" in err


def test_missing_coremltools_fails_clearly(monkeypatch, small_dirs, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "coremltools", None)  # import coremltools -> ImportError
    rc = script("export_coreml").main(["--config", "hunyuan", "--student", str(small_dirs / "hunyuan"),
                                       "--resolution", "32x32", "--frames", "9", "--output", str(tmp_path / "m.mlpackage")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs coremltools" in err and "pip install" in err


def test_missing_student_folder_fails_clearly(tmp_path, capsys):
    rc = script("export_onnx").main(["--config", "hunyuan", "--student", str(tmp_path), "--resolution", "32x32",
                                     "--output", str(tmp_path / "x.onnx")])
    assert rc == 2 and "no student found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def derived_dirs(tmp_path_factory):
    """The flash_taef2 student and a narrow flash_ltx student (random weights), saved."""
    root = tmp_path_factory.mktemp("derived")
    torch.manual_seed(0)
    build_student(load_config("flash_taef2")).save_pretrained(root / "flash_taef2")
    cfg = load_config("flash_ltx")  # every width at 1/32 of LTX's, with the config's operators
    cfg["student"]["widths"] = {k: 1 / 32 for k in ("mid", "up1", "up2.in", "up2", "up3.in", "up3")}
    cfg["student"]["inner"] = {s: 1 / 32 for s in ("mid", "up0", "up1", "up2", "up3")}
    build_student(cfg).save_pretrained(root / "flash_ltx")
    return root


@pytest.mark.parametrize("name, request_args", [
    ("flash_taef2", ["--resolution", "32x48", "--frames", "3", "--dynamic-frames"]),
    ("flash_ltx", ["--resolution", "32x64", "--frames", "9"]),
])
def test_derived_students_export_to_onnx(name, request_args, derived_dirs, tmp_path, capsys):
    out = tmp_path / f"{name}.onnx"
    rc = script("export_onnx").main(["--config", name, "--student", str(derived_dirs / name), "--output", str(out),
                                     *request_args])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "onnx.checker: ok" in text and onnx_max_rank(out) <= 5


@pytest.mark.parametrize("name, frames, size", [("flash_taef2", 2, (32, 32)), ("flash_ltx", 9, (32, 32))])
def test_derived_students_convert_to_coreml_at_rank_5(name, frames, size, derived_dirs, tmp_path):
    pytest.importorskip("coremltools")
    export_coreml, common = script("export_coreml"), script("_common")
    student = common.load_student(load_config(name), str(derived_dirs / name))
    z = torch.randn(student.latent_shape_for(frames, *size))
    path = tmp_path / f"{name}.mlpackage"
    export_coreml.convert(student, z, "fp16", "iOS17").save(str(path))
    info = export_coreml.describe(path)
    assert info["outputs"]["video"]["shape"] == [1, 3, frames, *size]
    assert info["max_rank"] <= 5
