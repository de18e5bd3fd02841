"""Analysis: what the models cost (shapes, parameters, FLOPs, memory) and how fast they run."""
