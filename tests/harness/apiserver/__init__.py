"""Building blocks of the fake Kubernetes API server; use `tests.harness.fake_apiserver`."""
