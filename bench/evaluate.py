"""Wall time of a CPU-sized evaluation: two tiny SD pipelines (micro-sd1 UNet,
64 px images), configs/evaluate/tiny.py (16 prompts x 5 images, three
weight-free scorers, 20 DDIM steps), on whatever device torch picks.

    python -m bench.evaluate --steps 20 --out bench_evaluate.json
    python -m bench.evaluate --steps 20 --threads 1    # a shared CPU: 2 threads can be far slower

Times a fresh run (generate, score, tables, pictures), then the same run again,
which finds every image and score on disk and only remakes the tables and
pictures; their difference is the generation and scoring time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench import report
from configs.evaluate import tiny
from scorers_torch import evaluate
from scorers_torch.tiny_models import make_tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--images", type=int, default=5, help="images per prompt")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    config = tiny.get_config()
    for name, seed in (("base", 0), ("trained", 1)):
        config.models[name] = str(make_tiny_pipeline(root / name, "sd", seed=seed, unet_preset_name="micro-sd1"))
    config.prompts.shapes.prompts = tiny.shape_prompts(args.prompts)
    config.images_per_prompt = args.images
    config.sampler.num_inference_steps = args.steps
    config.batch_size = args.batch_size
    config.cpu_threads = args.threads
    config.output_dir = str(root / "eval")

    start = time.perf_counter()
    results = evaluate.run(config)
    fresh = time.perf_counter() - start
    start = time.perf_counter()
    evaluate.run(config)
    report_only = time.perf_counter() - start
    images = 2 * args.prompts * args.images
    result = {
        "images": images,
        "steps": args.steps,
        "torch_threads": args.threads or torch.get_num_threads(),  # evaluate.run restores the count it found
        "fresh_run_s": round(fresh, 1),
        "tables_and_pictures_only_s": round(report_only, 1),
        "generate_and_score_images_per_s": round(images / (fresh - report_only), 2),
        "win_rates": {f"{w.a} vs {w.b} {w.metric}": round(w.win_rate, 3) for w in results.tables.win_rates},
    }
    print(results.text)
    report(result, args.out)


if __name__ == "__main__":
    main()
