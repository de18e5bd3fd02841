"""Reports: run folders (config, metrics, summary, checkpoints) and the figures drawn from them."""
