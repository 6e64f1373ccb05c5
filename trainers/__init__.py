"""The DreamBooth-style trainer: config, data, caches, loop, checkpoints, samples."""
