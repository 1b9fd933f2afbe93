"""MobileNet v1 and ShuffleNet v1 in JAX/Flax."""
