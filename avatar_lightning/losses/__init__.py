"""Loss terms (photometric, perceptual, geometric, regularisers)."""
