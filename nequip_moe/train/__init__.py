"""Training pieces of nequip-moe (agreement metrics, losses, lightning module)."""
