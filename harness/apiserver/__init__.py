"""Building blocks of the fake Kubernetes API server; use `harness.fake_apiserver`."""
