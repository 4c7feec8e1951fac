"""unsflow's benchmarks: ``python -m benchmarks`` runs every scenario (see __main__.py)."""
