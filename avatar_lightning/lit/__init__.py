"""LightningModules (prior, inversion, baselines) and the one shared render step.

Import the modules from their files (``avatar_lightning.lit.synshot_prior.SynShotPrior``); this
package does not import them eagerly, so ``avatar_lightning.lit.<x>`` stays cheap to import.
"""
