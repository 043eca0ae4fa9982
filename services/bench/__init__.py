"""Benchmark library shared by the simulator (`alise bench sim`) and the serving benchmark.

    workload           traces of real requests (ShareGPT, Alpaca-like) from ../shared/data
    arrivals           Poisson / gamma arrival times
    latency_metrics    per-request records -> latency, throughput, goodput summaries
    sustainable_rate   the highest request rate sustained under a normalized-latency bound
    plots              normalized latency vs request rate, one line per policy
    results            the JSON every benchmark saves (machine, commit, config, figures)
    serve_*            `alise bench serve`: load from client processes against a running gateway

and the benchmarks of single components, kept out of the service packages (a service imports only
services.common and the contracts; tests/test_import_boundaries.py):

    attention*         `alise bench attention`: the paged decode kernel vs the GPU's bandwidth
    kv_codec           `alise bench kv-codec`: speed, size and error of the KV swap codecs
    kv_transfer        `alise bench kv-transfer`: host-tier GB/s, shared memory vs gRPC stream
    predictor_*        `alise predictor eval` and `alise predictor bench`
"""
