"""`python -m lowlevel.bench networks`: the compiled training step and inference of several networks
(by default MobileNet v1 and the lightweight series) on this machine, one row each: images/s, the
multiply-adds behind them, and the share of the float32 matmul peak the training step reaches
(6 x the multiply-adds per training image, as in `bench step`)."""
from __future__ import annotations

import json

from lowlevel import costs, kernels, nets
from lowlevel.bench import timing
from lowlevel.errors import ConfigError


def run(args) -> int:
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in nets.NETS or nets.NETS[n].input_shape != (32, 32, 3)]
    if not names or unknown:
        raise ConfigError(f"--models {args.models}: name networks of 32x32 images, comma-separated, such as "
                          f"{','.join(nets.SERIES)}.")
    size, reps = (512, 2) if args.quick else (2048, 10)
    peak = timing.matmul_gflops(size, reps, args.repeats)
    rows = []
    for name in names:
        t, order, batches = timing.trainer(args.batch_size, args.alpha, args.steps, args.precision, model=name)
        madds = costs.totals(costs.rows(t.model)).madds
        train = timing.training_images_per_s(t, order, args.steps, args.repeats)
        infer = timing.inference_images_per_s(t.model, batches.eval_batch(0)[0], args.steps, args.repeats)
        rows.append({"model": name, "mult_adds": madds, "train_images_per_s": round(train, 1),
                     "infer_images_per_s": round(infer, 1),
                     "compute_fraction": round(6 * madds * train / (peak * 1e9), 3)})
    print(kernels.line())
    print(f"alpha {args.alpha:g}, batch {args.batch_size}, 32x32, {args.precision}, {args.steps} steps per timed "
          f"call, best of {args.repeats}; float32 matmul peak {peak:.1f} GFLOP/s")
    print(f"{'network':<20s} {'mult-adds':>10s} {'training img/s':>15s} {'inference img/s':>16s} {'of peak':>8s}")
    for r in rows:
        print(f"{r['model']:<20s} {r['mult_adds'] / 1e6:9.2f}M {r['train_images_per_s']:15.1f} "
              f"{r['infer_images_per_s']:16.1f} {100 * r['compute_fraction']:7.1f}%")
    print(json.dumps({"batch_size": args.batch_size, "alpha": args.alpha, "steps": args.steps,
                      "precision": args.precision, "matmul_gflops": round(peak, 1), "kernels": kernels.describe(),
                      "networks": rows}))
    return 0
