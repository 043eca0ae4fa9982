"""Benchmark library shared by the simulator (`alise bench sim`) and the serving benchmark.

    workload           traces of real requests (ShareGPT, Alpaca-like) from ../shared/data
    arrivals           Poisson / gamma arrival times
    latency_metrics    per-request records -> latency, throughput, goodput summaries
    sustainable_rate   the highest request rate sustained under a normalized-latency bound
    plots              normalized latency vs request rate, one line per policy
    results            the JSON every benchmark saves (machine, commit, config, figures)
    serve_*            `alise bench serve`: load from client processes against a running gateway
"""
