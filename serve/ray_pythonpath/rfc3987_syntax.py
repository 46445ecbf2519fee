"""Put first on the PYTHONPATH of the Ray processes alliedium starts (`alliedium.serving.runtime.start_ray`).

`import ray` imports jsonschema, which imports `rfc3987_syntax` if installed (jupyter's dependencies
install it); that module compiles an Earley grammar at import, 1.5-7 s of CPU in *every* Ray process
(agents, workers, Serve replicas) on a small machine -- enough for the raylet to give up waiting for
its agents (a fixed 15 s). Ray never validates IRIs, so Ray processes skip it: jsonschema treats the
ImportError as "IRI format check not available".
"""
raise ImportError("rfc3987_syntax is skipped in Ray processes (see serve/ray_pythonpath)")
