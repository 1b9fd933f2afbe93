"""The speed benchmark, `python -m mobileshuffle_jax.bench` (what it measures: `__main__`).

Every measured model runs in its own worker process: `ours` (our model under one conv
lowering), `peers` (pytorchcv and Keras), `litert` (our model as TFLite) and `photos` (the
input pipeline on a folder of JPEG photos), each reporting the `figures` they share;
`results` runs the workers, combines their rounds and formats the report. Each measurement
imports its framework only when it runs, so that a worker loads no other framework.
"""
