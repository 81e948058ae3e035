"""``make demo``: the fair few-shot benchmark — priors, then each method on the same held-out identities.

Runs the shipped configs through the same CLI a user runs. Methods (``--methods``; default
``inversion,baseline``, ``all`` for ``make demo-three-way``): the SynShot inversion
(``experiments/demo_prior.yaml`` or ``--prior-config``, then ``experiments/invert.yaml``), the no-prior
baseline (``experiments/baseline.yaml``), the 3DRealHead enrollment (``experiments/demo_realhead_prior.yaml``
or ``--realhead-prior-config``, then ``experiments/enroll.yaml``) from the same 3 views, and the
enrollment from the frontal view alone (paper Fig. 3). Fairness rules (issues "Honest measurement", 17):

- **Own convergence.** Every fit runs until its own EMA plateau (``callbacks.EMAEarlyStopping``),
  under a generous cap (``--cap-steps-per-frame`` × 3 steps, the 1-view fit's too, and
  ``trainer.max_steps``: the same rule for every method) that no run should reach; each fit's stop
  kind is recorded and a fit ended by a cap is flagged in the table. Each method keeps its own
  learning rates (its config's).
- **Same subjects, inputs and evaluation.** Both priors must be trained on one dataset (the demo
  refuses otherwise); every method sees the same 3 input images and parameters (the 3DRealHead
  identity texture is back-projected from exactly those views) and is scored by the same head-region
  metrics (:mod:`avatar_lightning.metrics.head_region`) on the same held-out images, split into novel
  views by angle to the nearest input camera (near < 30°, side 30–75°, far > 75°) and novel
  expressions. Digests of each fit's inputs and held-out images are compared after every fit
  (:func:`~avatar_lightning.demo.methods.check_same_data`). The 1-view enrollment is scored on the
  3-view held-out images and buckets.
- **Several subjects, with the spread**: ``--identities`` (≥ 5 by default) held-out identities; the
  table gives mean ± standard deviation over identities, and paired Δs (each method − baseline,
  enrollment − inversion, 1 view − 3 views) as the mean ± std of the per-identity differences.

Outputs under ``--out`` (default ``runs/demo``): ``prior.ckpt`` / ``realhead_prior.ckpt``,
``<method>/<identity>/`` (the avatar files and ``results.json`` of each fit), ``table.md``,
``results.json`` (every fit and the summary), ``side_by_side.png`` (target | each method, a novel
view and a novel expression per identity) and ``inversion_curves.png`` (stage-1 / stage-2 losses,
SynShot Fig. 11), all written atomically, the tables after every identity. ``--resume`` reuses the
priors and finished fits of an interrupted run.

    python -m avatar_lightning.demo [--methods all] [--identities 5] [--seed 0] [--skip-prior PATH.ckpt]
                                    [--tracking-noise shape=0.3,expr=0.3,pose=0.02] [--resume]
"""

from avatar_lightning.demo.figures import loss_curves, side_by_side
from avatar_lightning.demo.methods import (
    METHODS,
    SCORES,
    SPLITS,
    Fit,
    check_same_data,
    fit_avatar,
    fit_overrides,
    most_frontal_view,
    parse_methods,
    split_digests,
)
from avatar_lightning.demo.run import held_out_identities, main, parse_noise, train_prior, write_results
from avatar_lightning.demo.tables import PAIRS, combine_seeds, markdown_table, summarize, winner

__all__ = ["METHODS", "PAIRS", "SCORES", "SPLITS", "Fit", "check_same_data", "combine_seeds", "fit_avatar",
           "fit_overrides", "held_out_identities", "loss_curves", "main", "markdown_table", "most_frontal_view",
           "parse_methods", "parse_noise", "side_by_side", "split_digests", "summarize", "train_prior", "winner",
           "write_results"]
