"""Simulators of what kairay talks to, for the tests and the benchmarks (never installed).

- `fake_apiserver` (+ `apiserver/`): a Kubernetes API server in one process: CRDs with their schema
  and CEL rules, watches, resourceVersions, 409s, merge and JSON patches.
- `fake_kuberay`: the KubeRay operator's RayService / RayJob status machine against that API server.
- `kairay_up`: `kairay up` as a subprocess on a free port, plus small Workspace and adapter builders.

Both `tests/` and `benchmarks/` import them; neither imports the other.
"""
