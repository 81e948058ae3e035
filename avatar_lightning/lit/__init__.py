"""The LightningModules: priors, inversion, baselines."""
