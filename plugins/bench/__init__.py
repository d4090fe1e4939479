"""maitred's benchmarks: the MDP load generator, the standard set and ``maitred bench``.

Nothing here is imported when ``maitred`` starts: the ``bench`` verb's plugin
(:mod:`maitred.plugins.bench.plugin`) imports the benchmark only when the verb runs.
"""
