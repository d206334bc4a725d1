"""Running models: one run (plan, send what the cache lacks, score), and a suite of runs on one node."""
