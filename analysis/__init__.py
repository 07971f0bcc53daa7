"""analysis: activation-distribution analysis (recorder, Wasserstein distances, bounds, plots)."""
