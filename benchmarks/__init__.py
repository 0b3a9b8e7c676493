"""Side-by-side benchmarks: the engine against the tools it imitates, on the same machine, in one run.

    sudo make bench                                   # all three, with the venv's interpreter
    sudo .venv/bin/python -m benchmarks.bench_unpack  # a layer: the engine vs `tar -xzf` and `umoci`
    sudo .venv/bin/python -m benchmarks.bench_run     # a container: `minictl run` and the API vs `runc run`
    sudo .venv/bin/python -m benchmarks.bench_network # a bridge vs none; bridge vs loopback throughput

They print *ratios* measured alternately in one run, not absolute times, and they are not tests: a
shared, noisy machine makes absolute seconds meaningless from one hour to the next, while two programs
timed in turns, round after round, see the same noise. docs/benchmarks.md records one run of each and
explains the method and where the time goes.
"""
