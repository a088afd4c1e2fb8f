"""Dataset-scale export benchmarks: throughput of ``camkit export`` (1 and 2 processes) against a plain
pytorch-grad-cam loop, and the Flower-17 pseudo-masks (``python -m benchmarks.export --help``)."""
