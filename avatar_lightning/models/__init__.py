"""Plain ``nn.Module`` networks: encoders, quantiser, transformer, decoders, regressors."""
