"""Run an nnU-Net v2 command with medlossy's store reader registered.

    python -m medlossy.nnunet.launch nnUNetv2_plan_and_preprocess -d 812 -c 3d_fullres
    python -m medlossy.nnunet.launch nnUNetv2_predict -i imagesTs -o out -d 812 \
        -c 3d_fullres -f 0 -tr MedlossyTrainer

The command is nnU-Net's own console entry point, looked up by name in its package metadata
and called with the remaining arguments. Registering here, at import, is what lets the
worker processes nnU-Net spawns find ``MedlossyStoreIO`` too: a spawned process imports its
parent's main module (this one) again before it runs its task (see ``store_io``). Before
the command runs, medlossy's trainer is registered too, so that nnU-Net's lookup of a
trainer by name finds ``MedlossyTrainer`` without importing its variants (see ``trainer``);
only this process looks trainers up, so its spawned workers do not import it.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

from medlossy.nnunet.store_io import register

register()


def main(argv: list[str]) -> int:
    if not argv or not argv[0].startswith("nnUNetv2_"):
        print("usage: python -m medlossy.nnunet.launch nnUNetv2_COMMAND [ARGUMENTS ...]",
              file=sys.stderr)
        return 2
    found = entry_points(group="console_scripts", name=argv[0])
    if not found:
        print(f"medlossy: error: {argv[0]}: no such nnU-Net v2 command", file=sys.stderr)
        return 2
    from medlossy.nnunet.trainer import register as register_trainer

    register_trainer()
    sys.argv = argv  # nnU-Net's entry points parse sys.argv themselves
    result = next(iter(found)).load()()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
