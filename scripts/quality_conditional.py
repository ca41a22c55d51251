"""Quality of the conditional variants and InfoGAN on mnist5k, on the CPU in a few minutes each.

For cgan, acgan and projection: the share of samples that mnist5k's own domain classifier assigns to the
requested label, and the domain-FID. For infogan: the accuracy of the best one-to-one mapping of its learned
categorical code to the classifier's labels. Prints one JSON line per variant (and writes them to --out).
Steps default to 1,500, 3,000 for AC-GAN (its class head needs longer) and 5,000 for InfoGAN (its reference
code's MNIST run: 50 epochs of 100 updates), whose code needs longer to settle on the digit classes.

    python scripts/quality_conditional.py --variants cgan,acgan,projection,infogan
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fastgan
from fastgan.data import load_dataset
from fastgan.metrics import DomainEvaluator, get_feature_net
from fastgan.metrics.conditional import conditional_quality


DEFAULT_STEPS = {"acgan": 3000, "infogan": 5000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="cgan,acgan,projection,infogan")
    ap.add_argument("--steps", type=int, help="training steps (default: 1500; acgan 3000, infogan 5000)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=32, help="as `fastgan train`'s default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSONL file to append the results to")
    args = ap.parse_args()
    data = load_dataset("mnist5k")
    classifier = get_feature_net(data)
    evaluator = DomainEvaluator(data)
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        spec = fastgan.get_variant(variant)
        tr = fastgan.create(variant, channels=data.channels, width=args.width, seed=args.seed, batch_size=args.batch,
                            num_classes=data.num_classes if spec.conditional else None, device="cpu")
        steps = args.steps or DEFAULT_STEPS.get(variant, 1500)
        fit = tr.fit(data, steps, seed=args.seed)
        q = conditional_quality(lambda y: tr.sample(len(y), seed=args.seed + 1, labels=y), classifier, tr.task.num_classes,
                                learned_codes=not spec.conditional)
        m = evaluator.evaluate_images(tr.generate(2000, seed=args.seed))
        rec = {"variant": variant, "steps": steps, "batch": args.batch, "width": args.width, **q,
               "domain_fid": m["fid"], "img_per_s": fit["img_per_s"], "seconds": time.perf_counter() - t0,
               "classifier": classifier.info, "torch": torch.__version__}
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
