"""Seconds per training step of the distillation loop, in modes measured interleaved (one step of each
mode in turn, medians over steps):

  cached      latents from a pre-computed latent cache, teacher run up to the deepest aligned block
  full        as cached, but the teacher decodes fully for its features (what the reference code does)
  on_the_fly  video decoded from files and encoded by the frozen teacher every step

    python scripts/benchmark_training.py --config taef2 --data_dir DIR --steps 8 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.cli import ArgumentParser, run
from train_vae import train as train_mod


class FullDecodeTrainer(train_mod.Trainer):
    def teacher_features(self, latents, blocks):
        feats = self.teacher.features(latents, self.teacher.block_names)  # every block: the whole decoder
        return {b: feats[b] for b in blocks}


def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="taef2")
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--resolution", type=int, default=None, help="square clip size (default: the config's)")
    ap.add_argument("--num_frames", type=int, default=None, help="frames per clip (default: the config's)")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per mode (after 1 warm-up step)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default="cached,full,on_the_fly")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    common = ["--config", args.config, "--data_dir", args.data_dir, "--report_to", "none", "--clips_per_video", "1",
              "--max_steps", str(args.steps + 1)]
    for flag in ("resolution", "num_frames"):  # unset: the config's, as train.py takes it
        if getattr(args, flag) is not None:
            common += [f"--{flag}", str(getattr(args, flag))]
    modes = args.modes.split(",")
    trainers = {}
    for mode in modes:
        extra = ["--output_dir", str(work / mode)]
        if mode in ("cached", "full"):
            extra += ["--latents_dir", str(work / "latents")]
        else:
            extra += ["--no-cache_latents"]
        cls = FullDecodeTrainer if mode == "full" else train_mod.Trainer
        trainers[mode] = cls(train_mod.parse_args(common + extra))
    streams = {m: t.batches(0) for m, t in trainers.items()}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(args.steps + 1):
        for m in modes:
            t0 = time.perf_counter()
            trainers[m].train_step(streams[m])
            if i:  # the first step of each mode is warm-up
                times[m].append(time.perf_counter() - t0)
    first = next(iter(trainers.values())).s
    result = {"config": args.config, "resolution": first.resolution, "num_frames": first.num_frames,
              "threads": torch.get_num_threads(), "steps": args.steps,
              **{f"{m}_sec_per_step": statistics.median(v) for m, v in times.items()}}
    if "cached" in times:
        for m in modes:
            if m != "cached":
                result[f"{m}_over_cached"] = result[f"{m}_sec_per_step"] / result["cached_sec_per_step"]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    raise SystemExit(run(main))
