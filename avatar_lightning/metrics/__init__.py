"""torchmetrics metrics for avatars."""
