"""Running models, as the flow of one run: settings → planning → sending → record, driven by runner; a suite
of runs on one node (suite), scored by one stage (stage)."""
