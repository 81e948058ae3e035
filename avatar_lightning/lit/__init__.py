"""LightningModules (prior, inversion, baselines) and what they share.

``base.py`` defines the vocabulary every module speaks (``AvatarModule``: ``forward``,
``compute_losses``, ``compute_metrics``, ``log_images``, thin shared steps); ``render_step.py`` the
one place that poses and renders; ``checkpoint.py`` what a checkpoint records; ``stopping.py`` the
early-stopping contract. Import the modules from their files
(``avatar_lightning.lit.synshot_prior.SynShotPrior``); this package does not import them eagerly,
so ``avatar_lightning.lit.<x>`` stays cheap to import.
"""
