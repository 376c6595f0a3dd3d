"""``manage.py write_random_checkpoint OUTPUT [--sam-type vit_b] [--seed N]``

Writes a SAM with randomly initialised weights in Meta's checkpoint format. Such a model
costs the same to run as a trained one, so it checks set-up, plumbing and speed offline,
but its masks mean nothing: never review or report them as results.
"""

from pathlib import Path

import torch
from django.core.management.base import BaseCommand, CommandError

from ml.sam import VIT_B, VIT_H, VIT_L, build_sam, save_checkpoint

ARCHITECTURES = {"vit_b": VIT_B, "vit_l": VIT_L, "vit_h": VIT_H}


class Command(BaseCommand):
    help = "Write a randomly initialised SAM checkpoint (for plumbing and speed checks only)."

    def add_arguments(self, parser):
        parser.add_argument("output", help="Path of the .pth file to write.")
        parser.add_argument("--sam-type", choices=sorted(ARCHITECTURES), default="vit_b")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")

    def handle(self, *args, **options):
        output = Path(options["output"])
        if output.exists():
            raise CommandError(f"{output} exists; choose a new path (it is never overwritten).")
        torch.manual_seed(options["seed"])
        model = build_sam(ARCHITECTURES[options["sam_type"]])
        digest = save_checkpoint(model, output)
        self.stdout.write(f"wrote {output} ({options['sam_type']}, random weights, sha256 {digest})")
        self.stderr.write(
            "Random weights: use this file to check the pipeline and its speed, not its masks."
        )
