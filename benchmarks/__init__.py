"""headrace benchmarks: viewer load against headrace and the per-session peer, parser
throughput, HoloViews update cost and the cost of the cluster. Run ``python -m benchmarks``.
"""
