"""Pure-torch models: AM dynamics, ClAM, k-means, DCAM, attention clustering. No Ray, no I/O."""
