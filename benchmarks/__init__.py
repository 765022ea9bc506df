"""`python -m benchmarks.run`: kairay measured against the raw vLLM engine in the same run (`make bench`)."""
